#!/usr/bin/env python
"""Meta-train sinusoid regression with an RK meta-gradient: ``rkmeta_rl.cli.sinusoid`` (also
``rkmeta-train-sinusoid``).

    python scripts/train_sinusoid.py --method midpoint
    python scripts/train_sinusoid.py --logdir runs/sinusoid-midpoint-s0 --resume   # continue after a crash
"""

from rkmeta_rl.cli.sinusoid import main, parse_args  # noqa: F401

if __name__ == "__main__":
    main()
