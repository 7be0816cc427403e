#!/usr/bin/env python
"""Meta-train 2D navigation with RK-weighted MAML-TRPO (Im et al., 2019; Finn et al., 2017; DESIGN.md s. 2).

    python scripts/train_nav.py --method ralston                      # the seed paper's setting
    python scripts/train_nav.py --method midpoint --config reference  # the reference MAML-RL code's setting
    python scripts/train_nav.py --logdir runs/nav-ralston-seed-s0 --resume

Settings (``--config``):
  seed       2x100 ReLU policy, inner lr 0.16, 40 tasks x 20 trajectories, horizon 100, 100 iterations
  reference  2x64 tanh policy,  inner lr 0.1,  20 tasks x 20 trajectories, horizon 100, 500 iterations
Any flag given explicitly overrides the preset.

The run directory gets TensorBoard events (``rollout/`` pre/post-adaptation returns, ``train/`` KL,
surrogate improvement, line-search steps, CG residual, ``time/`` env steps and timings, and every
``--figure-interval`` iterations a figure of trajectories before and after adaptation), ``progress.csv``,
atomic checkpoints (``--resume`` continues exactly), and ``metrics.json`` (printed as the last line).

Data parallel (issue 6)::

    torchrun --standalone --nproc_per_node=2 scripts/train_nav.py --method ralston --device cpu

each process samples its share of the meta-batch from its own task / action-noise stream, and TRPO's gradient,
Fisher-vector products and line-search values are averaged over the processes (the full meta-batch means), so
every process takes the same step (:class:`rkmeta_rl.rl.algorithm.MetaTRPO`). Rank 0 alone logs, renders the
figures and writes checkpoints (holding every rank's random state, so ``--resume`` under torchrun with the same
number of processes continues exactly) and ``metrics.json``. Without torchrun nothing changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from stable_baselines3.common.logger import Figure

from rkmeta_rl.distributed import DistInfo, destroy, init_distributed, split_batch
from rkmeta_rl.logger import make_logger
from rkmeta_rl.rk import method_slug, parse_method_spec
from rkmeta_rl.rl.algorithm import MetaTRPO
from rkmeta_rl.rl.evaluation import trajectory_figure
from rkmeta_rl.rl.run_loop import resume_run, run_summary, train_loop
from rkmeta_rl.utils import check_positive, set_threads, write_json_atomic

PRESETS = {
    "seed": dict(hidden=(100, 100), activation="relu", inner_lr=0.16, meta_batch_size=40, fast_batch_size=20,
                 iterations=100),
    "reference": dict(hidden=(64, 64), activation="tanh", inner_lr=0.1, meta_batch_size=20, fast_batch_size=20,
                      iterations=500),
}
ENV_ID = "rkmeta/Navigation2D-v0"
#: settings a ``--resume`` must share with the checkpoint
RESUME_KEYS = ("method", "adapt", "meta_batch_size", "fast_batch_size", "inner_lr", "seed", "policy_kwargs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="ralston", help="euler, midpoint, heun, ralston, itb, generic(x) or x > 0; "
                   "or per-parameter methods 'glob=method,...' over the policy's names (w0 b0 w1 b1 w2 b2 log_std), "
                   "e.g. 'w2|b2|log_std=midpoint,*=ralston'")
    p.add_argument("--adapt", default=None,
                   help="parameters the inner step moves: comma-separated globs (default all; ANIL: 'w2,b2,log_std')")
    p.add_argument("--config", choices=tuple(PRESETS), default="seed")
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--meta-batch-size", type=int, default=None)
    p.add_argument("--fast-batch-size", type=int, default=None, help="trajectories per task")
    p.add_argument("--inner-lr", type=float, default=None, help="MAML's alpha (see --step-rule)")
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--step-rule", choices=("tableau", "fixed"), default="tableau")
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--max-kl", type=float, default=0.01)
    p.add_argument("--fvp-subsample", type=float, default=0.2,
                   help="fraction of steps the Fisher-vector product uses (1.0: exact on all data; 0.2, as "
                        "OpenAI Baselines' TRPO, is ~3x faster; gradient and line search always use all data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--logdir", default=None, help="run directory (default runs/nav-<method>-<config>-s<seed>)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--checkpoint-interval", type=int, default=5)
    p.add_argument("--figure-interval", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="under torchrun: collective timeout (default $RKMETA_DIST_TIMEOUT or 120)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="print the logger table every iteration")
    return p.parse_args(argv)


def build(args: argparse.Namespace, dist: DistInfo | None = None) -> tuple[MetaTRPO, int]:
    """Validate the flags and build the model (``dist``: this process's place under torchrun)."""
    preset = PRESETS[args.config]
    pick = lambda v, k: preset[k] if v is None else v  # noqa: E731
    iterations = pick(args.iterations, "iterations")
    check_positive("iterations", iterations, integer=True)
    for name in ("meta_batch_size", "fast_batch_size"):
        check_positive(name, pick(getattr(args, name), name), integer=True)
    check_positive("inner_lr", pick(args.inner_lr, "inner_lr"))
    check_positive("inner_steps", args.inner_steps, integer=True)
    check_positive("max_kl", args.max_kl)
    check_positive("checkpoint_interval", args.checkpoint_interval, integer=True)
    if not 0 < args.fvp_subsample <= 1:
        raise ValueError(f"fvp_subsample must be in (0, 1], got {args.fvp_subsample}")
    tab = parse_method_spec(args.method)
    if tab.stages > 2:
        raise ValueError(f"meta-RL supports one- and two-stage methods; {tab.name} has {tab.stages} stages")
    model = MetaTRPO(
        "MlpPolicy", ENV_ID, method=args.method, meta_batch_size=pick(args.meta_batch_size, "meta_batch_size"),
        fast_batch_size=pick(args.fast_batch_size, "fast_batch_size"), inner_lr=pick(args.inner_lr, "inner_lr"),
        inner_steps=args.inner_steps, step_rule=args.step_rule, first_order=args.first_order, max_kl=args.max_kl,
        seed=args.seed, device=args.device, fvp_subsample=args.fvp_subsample,
        policy_kwargs={"hidden_sizes": preset["hidden"], "activation": preset["activation"]}, dist=dist,
        adapt=args.adapt,
    )
    return model, iterations


def main(argv: list[str] | None = None) -> dict:
    """Train (under torchrun: this rank's part of a data-parallel run); returns the metrics."""
    args = parse_args(argv)
    set_threads(args.threads)
    try:
        dist = init_distributed(args.device, timeout_s=args.dist_timeout)
        preset = PRESETS[args.config]
        meta_batch = preset["meta_batch_size"] if args.meta_batch_size is None else args.meta_batch_size
        check_positive("meta_batch_size", meta_batch, integer=True)
        split_batch(meta_batch, dist.rank, dist.world_size)
    except ValueError as err:
        destroy()
        sys.exit(f"error: {err}")
    try:
        return _run(args, dist)
    finally:
        destroy()


def _run(args: argparse.Namespace, dist: DistInfo) -> dict:
    try:
        model, iterations = build(args, dist)
        slug = method_slug(args.method, args.adapt)
    except (ValueError, RuntimeError) as err:
        sys.exit(f"error: {err}")
    logdir = args.logdir or os.path.join("runs", f"nav-{slug}-{args.config}-s{args.seed}")
    history: list[dict[str, float]] = []
    elapsed = 0.0
    if args.resume:
        try:
            model, history, elapsed = resume_run(logdir, model, RESUME_KEYS, dist, args.device)
        except ValueError as err:
            sys.exit(f"error: {err}")
    if dist.is_main:
        os.makedirs(logdir, exist_ok=True)
    # only rank 0 logs; the other ranks get a logger that writes nowhere
    model.set_logger(make_logger(logdir if dist.is_main else None, resume=args.resume, verbose=args.verbose))
    # tasks for the periodic trajectory figure, drawn from their own stream (training's is untouched)
    fig_tasks = model.sampler.sample_tasks(3, np.random.default_rng(10_000 + args.seed))

    def figure(it: int) -> None:
        if dist.is_main and args.figure_interval and (it % args.figure_interval == 0 or it == 1):
            fig = trajectory_figure(model.sampler, model.meta_step, model.policy.params(), fig_tasks,
                                    torch.Generator(device=model.device).manual_seed(20_000 + it),
                                    title=f"iteration {it}")
            model.logger.record("rollout/trajectories", Figure(fig, close=True), exclude=("stdout", "csv"))

    elapsed, _ = train_loop(model, iterations, logdir, dist, history, elapsed,
                            checkpoint_interval=args.checkpoint_interval, progress=not args.no_progress,
                            desc=f"nav[{model.tableau.name}]", on_iteration=figure,
                            checkpoint_extra={"config": args.config})
    metrics = run_summary(model, history, elapsed, dist)
    metrics.update({"config": args.config, "fvp_subsample": args.fvp_subsample, "seed": args.seed})
    model.logger.close()
    if dist.is_main:
        write_json_atomic(os.path.join(logdir, "metrics.json"), metrics)
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
    return metrics


if __name__ == "__main__":
    main()
