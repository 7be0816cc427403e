#!/usr/bin/env python
"""Meta-train 2D navigation with RK-weighted MAML-TRPO: ``rkmeta_rl.cli.nav`` (also ``rkmeta-train-nav``).

    python scripts/train_nav.py --method ralston                      # the seed paper's setting
    python scripts/train_nav.py --method midpoint --config reference  # the reference MAML-RL code's setting
    python scripts/train_nav.py --logdir runs/nav-ralston-seed-s0 --resume
"""

from rkmeta_rl.cli.nav import main, parse_args  # noqa: F401

if __name__ == "__main__":
    main()
