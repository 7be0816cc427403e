#!/usr/bin/env python
"""Meta-train a locomotion task family (or your own) with RK-weighted MAML-TRPO: ``rkmeta_rl.cli.locomotion``
(also ``rkmeta-train-locomotion``).

    python scripts/train_locomotion.py --env HalfCheetahVel --method ralston
    python scripts/train_locomotion.py --env my/Pendulum-v0 --module my_package.my_envs   # your own family
"""

from rkmeta_rl.cli.locomotion import main, parse_args  # noqa: F401

if __name__ == "__main__":
    main()
