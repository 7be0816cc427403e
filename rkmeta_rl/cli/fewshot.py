"""``rkmeta-train-fewshot`` / ``python scripts/train_fewshot.py``: meta-train few-shot image classification
(Omniglot, MiniImagenet) with an RK meta-gradient.

    rkmeta-train-fewshot --dataset omniglot --ways 5 --shots 1 --method ralston --data-root PATH
    rkmeta-train-fewshot --dataset omniglot --ways 20 --shots 1 --config paper --data-root PATH
    rkmeta-train-fewshot --dataset miniimagenet --ways 5 --shots 5 --data-root PATH
    rkmeta-train-fewshot --logdir runs/omniglot-5w1s-ralston-s0 --resume ...   # same flags
    torchrun --standalone --nproc_per_node=2 scripts/train_fewshot.py --dataset omniglot ...  # data parallel

``--config maml`` (default) is MAML's per-setting defaults (Finn et al., 2017) with 15 query images per class
and 60,000 iterations: Omniglot 5-way: meta-batch 32, inner lr 0.4, 1 inner step in training and 3 at test;
20-way: meta-batch 16, inner lr 0.1, 5 steps; MiniImagenet: meta-batch 4 (1-shot) or 2 (5-shot), inner lr
0.01, 5 steps in training and 10 at test, conv4 with 32 filters and max-pooling. ``--config paper`` is the
paper's protocol for the setting (:mod:`rkmeta_rl.presets`). The final evaluation adapts ``--eval-tasks`` test
episodes and writes ``metrics.json`` (accuracy, 95% CI), printed as the last line.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..distributed import DistInfo
from ..presets import FEWSHOT_PROTOCOLS, fewshot_preset
from ..rk import method_slug
from ..supervised.config import FewShotConfig
from ..supervised.trainer import MetaTrainer
from .flags import config_from_args
from .runner import Command, run_command
from .supervised import finish_supervised, make_supervised_parser

__all__ = ["main", "parse_args", "build_problem"]


def _parser() -> tuple[argparse.ArgumentParser, list[str]]:
    p, fields = make_supervised_parser(__doc__, FewShotConfig, FEWSHOT_PROTOCOLS, "maml",
                                       fewshot_preset("maml", "omniglot", 5, 1), "maml --dataset omniglot --ways 5 "
                                       "--shots 1; other settings: rkmeta_rl.presets")
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=None, help="dataset folder (Omniglot default: the data root, "
                   "$RKMETA_DATA or ~/.cache/rkmeta_rl/data; see docs/data.md)")
    g.add_argument("--download", action="store_true",
                   help="download Omniglot into the data root first when it is missing (checksums verified)")
    g.add_argument("--url-base", default=None, help="mirror of the Omniglot archives for --download")
    g.add_argument("--cache-dir", default=None, help="preprocessed-array cache (default ~/.cache/rkmeta_rl)")
    return p, fields


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return _parser()[0].parse_args(argv)


def _config(args: argparse.Namespace) -> FewShotConfig:
    preset = fewshot_preset(args.config, args.dataset or "omniglot", 5 if args.ways is None else args.ways,
                            1 if args.shots is None else args.shots)
    config = config_from_args(preset, args, _parser()[1])
    assert isinstance(config, FewShotConfig)
    return config


def build_problem(args: argparse.Namespace, c: FewShotConfig) -> Any:
    """Load the dataset's splits and build the few-shot problem of ``c``."""
    from ..supervised.fewshot_problem import FewShotProblem
    from ..supervised.image_cache import check_writable_dir

    if args.cache_dir is not None:
        check_writable_dir(args.cache_dir, "--cache-dir")
    if c.dataset == "omniglot":
        from ..data import omniglot_root
        from ..supervised.omniglot import load_omniglot_splits

        root = omniglot_root(args.data_root, download=args.download, url_base=args.url_base,
                             progress=not args.no_progress)
        splits = load_omniglot_splits(root, cache_dir=args.cache_dir, num_val=c.val_characters,
                                      progress=not args.no_progress, split_seed=c.split_seed)
    else:
        from ..supervised.miniimagenet import load_miniimagenet

        if args.data_root is None:
            raise ValueError("--data-root is required for MiniImagenet (a folder with train.csv/val.csv/test.csv "
                             "and images/, or the mini-imagenet-cache-*.pkl files)")
        splits = load_miniimagenet(args.data_root, cache_dir=args.cache_dir, progress=not args.no_progress)
    return FewShotProblem(c.dataset, splits.train, splits.test, splits.val, ways=c.ways, shots=c.shots,
                          queries=c.queries, test_queries=c.test_queries, filters=c.filters, pool=c.pool)


def _build(args: argparse.Namespace, config: FewShotConfig, dist: DistInfo, logdir: str) -> MetaTrainer:
    problem = build_problem(args, config)
    return MetaTrainer(problem, config, logdir=logdir, resume=args.resume, verbose=args.verbose, dist=dist)


def _finish(args: argparse.Namespace, trainer: MetaTrainer) -> dict[str, Any]:
    c = trainer.config
    assert isinstance(c, FewShotConfig)
    res = trainer.final_evaluation()
    steps = c.test_inner_steps
    return finish_supervised(trainer, {
        "dataset": c.dataset, "ways": c.ways, "shots": c.shots, "queries": c.queries,
        "accuracy": res["acc"]["mean"][steps], "accuracy_ci95": res["acc"]["ci95"][steps],
        "accuracy_per_step": res["acc"]["mean"], "test_inner_steps": steps, "eval_tasks": c.final_eval_tasks,
        "filters": c.filters, "pool": c.pool, "config": args.config,
        "wall_seconds_this_process": round(time.perf_counter() - args.wall_start, 2),
    }, "episode.png")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train (under torchrun: this rank's part of a data-parallel run); returns the metrics."""
    parser, _ = _parser()
    return run_command(Command(
        algorithm="MetaTrainer",
        parser=parser, config=_config,
        logdir=lambda a, c: f"runs/{c.dataset}-{c.ways}w{c.shots}s-{method_slug(c.method, c.adapt)}-s{c.seed}",
        build=_build, finish=_finish,
    ), argv)


if __name__ == "__main__":
    main()
