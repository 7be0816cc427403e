#!/usr/bin/env python
"""Meta-train few-shot image classification (Omniglot, MiniImagenet) with an RK meta-gradient:
``rkmeta_rl.cli.fewshot`` (also ``rkmeta-train-fewshot``).

    python scripts/train_fewshot.py --dataset omniglot --ways 5 --shots 1 --method ralston --data-root PATH
    python scripts/train_fewshot.py --dataset miniimagenet --ways 5 --shots 1 --data-root PATH
"""

from rkmeta_rl.cli.fewshot import main, parse_args  # noqa: F401

if __name__ == "__main__":
    main()
