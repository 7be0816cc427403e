#!/usr/bin/env python
"""Meta-train few-shot image classification (Omniglot, MiniImagenet) with an RK meta-gradient.

    python scripts/train_fewshot.py --dataset omniglot --ways 5 --shots 1 --method ralston --data-root PATH
    python scripts/train_fewshot.py --dataset omniglot --ways 5 --shots 1 --time-budget 20
    python scripts/train_fewshot.py --dataset miniimagenet --ways 5 --shots 5 --data-root PATH
    python scripts/train_fewshot.py --logdir runs/omniglot-5w1s-ralston-s0 --resume ...   # same flags
    torchrun --standalone --nproc_per_node=2 scripts/train_fewshot.py --dataset omniglot ...  # data parallel

Defaults per setting are MAML's (Finn et al., 2017): Omniglot 5-way: meta-batch 32, inner lr 0.4, 1 inner
step in training and 3 at test; 20-way: meta-batch 16, inner lr 0.1, 5 steps; MiniImagenet: meta-batch 4
(1-shot) or 2 (5-shot), inner lr 0.01, 5 steps in training and 10 at test, conv4 with 32 filters and
max-pooling. The final evaluation adapts 600 test episodes and writes ``metrics.json`` (accuracy, 95% CI),
printed as the last line.

Under ``torchrun`` each process takes its share of the meta-batch (which must be >= the number of processes)
and the meta-gradients are averaged (:mod:`rkmeta_rl.distributed`); rank 0 logs, checkpoints and prints the
JSON; the final evaluation is split across the processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING

import torch

from rkmeta_rl.distributed import destroy, init_distributed, split_batch
from rkmeta_rl.rk import TABLEAU_NAMES, method_slug, parse_method_spec
from rkmeta_rl.supervised.trainer import MetaTrainConfig, MetaTrainer

if TYPE_CHECKING:
    from rkmeta_rl.supervised.fewshot_problem import FewShotProblem

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OMNIGLOT = os.environ.get("RKMETA_OMNIGLOT", os.path.join(REPO, "..", "shared", "data", "omniglot"))


def setting_defaults(dataset: str, ways: int, shots: int) -> dict:
    """MAML's hyper-parameters for a benchmark setting."""
    if dataset == "omniglot":
        if ways >= 20:
            return dict(meta_batch_size=16, inner_lr=0.1, inner_steps=5, test_inner_steps=5, filters=64,
                        pool="stride")
        return dict(meta_batch_size=32, inner_lr=0.4, inner_steps=1, test_inner_steps=3, filters=64, pool="stride")
    return dict(meta_batch_size=4 if shots == 1 else 2, inner_lr=0.01, inner_steps=5, test_inner_steps=10,
                filters=32, pool="max")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("omniglot", "miniimagenet"), default="omniglot")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=15, help="query images per class")
    p.add_argument("--method", default="midpoint",
                   help=f"RK method: {', '.join(n for n in TABLEAU_NAMES if n not in ('kutta3', 'rk4'))}, or x > 0; or "
                   "per-parameter methods 'glob=method,...', first match wins (e.g. 'fc.*=midpoint,*=ralston')")
    p.add_argument("--adapt", default=None,
                   help="parameters the inner loop moves: comma-separated globs (default all; ANIL: 'fc.*')")
    p.add_argument("--data-root", default=None, help="dataset folder (Omniglot default: ../shared/data/omniglot)")
    p.add_argument("--cache-dir", default=None, help="preprocessed-array cache (default ~/.cache/rkmeta_rl)")
    p.add_argument("--iterations", type=int, default=60_000)
    p.add_argument("--meta-batch-size", type=int, default=None)
    p.add_argument("--inner-lr", type=float, default=None, help="MAML's alpha (see --step-rule)")
    p.add_argument("--inner-steps", type=int, default=None)
    p.add_argument("--test-inner-steps", type=int, default=None)
    p.add_argument("--step-rule", choices=("tableau", "fixed"), default="tableau")
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--meta-lr", type=float, default=1e-3)
    p.add_argument("--filters", type=int, default=None)
    p.add_argument("--pool", choices=("stride", "max"), default=None)
    p.add_argument("--val-characters", type=int, default=0,
                   help="Omniglot: carve a validation slice of this many characters out of the 1200 training ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--path", choices=("auto", "vmap", "loop"), default="auto", help="engine execution path")
    p.add_argument("--logdir", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="stop training cleanly after this many minutes, then evaluate")
    p.add_argument("--eval-interval", type=int, default=500)
    p.add_argument("--eval-tasks", type=int, default=600, help="episodes of the final evaluation")
    p.add_argument("--checkpoint-interval", type=int, default=200)
    p.add_argument("--log-interval", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="under torchrun: collective timeout (default $RKMETA_DIST_TIMEOUT or 120); keep it above "
                        "the dataset loading time difference between processes")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def build_problem(args: argparse.Namespace, defaults: dict):
    from rkmeta_rl.supervised.fewshot_problem import FewShotProblem

    filters = args.filters or defaults["filters"]
    pool = args.pool or defaults["pool"]
    if args.dataset == "omniglot":
        from rkmeta_rl.supervised.omniglot import load_omniglot_splits

        splits = load_omniglot_splits(args.data_root or DEFAULT_OMNIGLOT, cache_dir=args.cache_dir,
                                      seed=args.seed, num_val=args.val_characters, progress=not args.no_progress)
    else:
        from rkmeta_rl.supervised.miniimagenet import load_miniimagenet

        if args.data_root is None:
            raise ValueError("--data-root is required for MiniImagenet (a folder with train.csv/val.csv/test.csv "
                             "and images/, or the mini-imagenet-cache-*.pkl files)")
        splits = load_miniimagenet(args.data_root, cache_dir=args.cache_dir, progress=not args.no_progress)
    return FewShotProblem(args.dataset, splits.train, splits.test, splits.val, ways=args.ways, shots=args.shots,
                          queries=args.queries, filters=filters, pool=pool)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    d = setting_defaults(args.dataset, args.ways, args.shots)
    pick = lambda v, k: d[k] if v is None else v  # noqa: E731
    cfg = MetaTrainConfig(
        method=args.method, adapt=args.adapt, iterations=args.iterations,
        meta_batch_size=pick(args.meta_batch_size, "meta_batch_size"),
        inner_lr=pick(args.inner_lr, "inner_lr"), inner_steps=pick(args.inner_steps, "inner_steps"),
        test_inner_steps=pick(args.test_inner_steps, "test_inner_steps"), step_rule=args.step_rule,
        first_order=args.first_order, meta_lr=args.meta_lr, seed=args.seed, device=args.device, path=args.path,
        compile=False, log_interval=args.log_interval, eval_interval=args.eval_interval, eval_tasks=100,
        final_eval_tasks=args.eval_tasks, checkpoint_interval=args.checkpoint_interval,
        time_budget_min=args.time_budget, threads=args.threads, eval_chunk=50,
    )
    try:
        cfg.validate()
        stages = parse_method_spec(cfg.method).stages
        if stages > 2:
            raise ValueError(f"few-shot benchmarks support one- and two-stage methods; {cfg.method} has "
                             f"{stages} stages")
        for name in ("ways", "shots", "queries"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
        dist = init_distributed(cfg.device, timeout_s=args.dist_timeout)
        split_batch(cfg.meta_batch_size, dist.rank, dist.world_size)
    except ValueError as err:
        destroy()
        sys.exit(f"error: {err}")
    try:
        try:
            problem = build_problem(args, d)
        except (ValueError, FileNotFoundError, NotADirectoryError) as err:
            sys.exit(f"error: {err}")
        return _run(args, cfg, problem, dist.is_main)
    finally:
        destroy()


def _run(args: argparse.Namespace, cfg: MetaTrainConfig, problem: "FewShotProblem", is_main: bool) -> dict:
    logdir = args.logdir or os.path.join(
        "runs", f"{args.dataset}-{args.ways}w{args.shots}s-{method_slug(args.method, args.adapt)}-s{args.seed}")
    trainer = MetaTrainer(problem, cfg, logdir=logdir, resume=args.resume, verbose=args.verbose)
    t0 = time.perf_counter()
    trainer.learn(progress_bar=not args.no_progress)
    res = trainer.final_evaluation()
    steps = cfg.test_inner_steps
    metrics = trainer.write_metrics({
        "dataset": args.dataset, "ways": args.ways, "shots": args.shots, "queries": args.queries,
        "accuracy": res["acc"]["mean"][steps], "accuracy_ci95": res["acc"]["ci95"][steps],
        "accuracy_per_step": res["acc"]["mean"], "test_inner_steps": steps, "eval_tasks": cfg.final_eval_tasks,
        "filters": problem.filters, "pool": problem.pool,
        "wall_seconds_this_process": round(time.perf_counter() - t0, 2),
    })
    trainer.close()
    if is_main:
        fig = problem.figure(trainer.params, trainer.adapt_lr, steps, torch.Generator().manual_seed(cfg.seed + 20_000),
                             trainer.device)
        fig.savefig(os.path.join(logdir, "episode.png"), dpi=110)
        print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
