#!/usr/bin/env python
"""Meta-train a locomotion task family (or any task family) with RK-weighted MAML-TRPO (DESIGN.md s. 2, 3).

    python scripts/train_locomotion.py --env HalfCheetahVel --method ralston
    python scripts/train_locomotion.py --env AntDir --method midpoint --horizon 100
    python scripts/train_locomotion.py --env my/Pendulum-v0 --module my_package.my_envs   # your own family
    python scripts/train_locomotion.py --env HalfCheetahVel --logdir runs/cheetah-vel --resume

Defaults are the MAML paper's locomotion setting (Finn, Abbeel and Levine, 2017): 2x100 ReLU policy, inner
learning rate 0.1, meta-batch 40 tasks x 20 trajectories, horizon 200 (``--horizon 100`` gives the reference
PyTorch code's), TRPO max KL 0.01, and 500 meta-iterations (the reference PyTorch MAML-RL code's
``num-batches`` for HalfCheetah; the paper plots its learning curves over a few hundred). Any flag overrides.

``--env`` takes a built-in family name (HalfCheetahVel, HalfCheetahDir, AntVel, AntDir, AntGoal) or any
registered Gymnasium id. ``--module`` (repeatable) imports a module first, so that its ``gymnasium.register``
call runs: a family of your own needs only that module (DESIGN.md section 3); it is checked against the
task-family protocol before any training, with an error saying what is missing.

Sampling: every task x trajectory env is stepped together in this process, one policy forward per time step
(:class:`rkmeta_rl.rl.sampler.BatchedSampler`); ``--num-workers k`` spreads the envs over k processes
(results are the same; on few cores in-process is fastest).

The run directory gets TensorBoard events (``rollout/`` pre/post-adaptation returns and episode lengths,
``train/`` KL, surrogate improvement, line-search steps, CG residual, ``time/`` env steps and the split between
sampling and the update, and every ``--video-interval`` iterations animated rollouts of ``--video-tasks`` fixed
tasks before (``video/pre_adaptation``) and after one inner step (``video/post_adaptation``), each task
written on its frames), ``progress.csv``, atomic checkpoints (``--resume`` continues exactly: videos draw
from their own random streams), and ``metrics.json`` (printed as the last line).

Data parallel (issue 6)::

    torchrun --standalone --nproc_per_node=2 scripts/train_locomotion.py --env HalfCheetahVel --device cpu

each process samples its share of the meta-batch (its own tasks, env seeds and action noise) and TRPO's
gradient, Fisher-vector products and line-search values are averaged over the processes, so every process
takes the same step (:class:`rkmeta_rl.rl.algorithm.MetaTRPO`). Rank 0 alone logs, renders videos and writes
checkpoints (every rank's random state inside: ``--resume`` under torchrun continues exactly) and
``metrics.json``; ``--time-budget`` stops all ranks together. Without torchrun nothing changes.

Devices: ``--device cuda`` puts the policy, the episodes and the meta-update on the GPU; MuJoCo steps on the
CPU, with one batched host-to-device copy of the observations (and one device-to-host copy of the actions)
per time step.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import logging
import os
import sys
import time
from typing import Any, Callable

import numpy as np
import torch

from rkmeta_rl import video as rk_video  # sets MUJOCO_GL for offscreen rendering before mujoco is imported
from rkmeta_rl.distributed import DistInfo, destroy, init_distributed, split_batch
from rkmeta_rl.envs.locomotion import LOCOMOTION_IDS
from rkmeta_rl.envs.protocol import TaskFamilyError
from rkmeta_rl.logger import make_logger
from rkmeta_rl.rk import get_tableau
from rkmeta_rl.rl.algorithm import MetaTRPO
from rkmeta_rl.rl.run_loop import resume_run, run_summary, train_loop
from rkmeta_rl.utils import check_positive, set_threads, write_json_atomic

#: The MAML paper's locomotion setting.
DEFAULTS: dict[str, Any] = dict(hidden=(100, 100), activation="relu", inner_lr=0.1, meta_batch_size=40,
                                fast_batch_size=20, max_kl=0.01, iterations=500)

#: Settings a resumed run must share with its checkpoint.
RESUME_KEYS = ("method", "meta_batch_size", "fast_batch_size", "inner_lr", "inner_steps", "step_rule",
               "first_order", "seed", "policy_kwargs", "horizon")

_log = logging.getLogger("train_locomotion")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetahVel",
                   help=f"a family name ({', '.join(LOCOMOTION_IDS)}) or a registered id (e.g. your/Id-v0)")
    p.add_argument("--module", action="append", default=[],
                   help="import this module first (the one whose gymnasium.register call registers --env); "
                        "repeatable")
    p.add_argument("--method", default="ralston", help="euler, midpoint, heun, ralston, itb, generic(x) or x > 0")
    p.add_argument("--iterations", type=int, default=DEFAULTS["iterations"])
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="stop cleanly (checkpoint, metrics.json) once this much training time has passed")
    p.add_argument("--meta-batch-size", type=int, default=DEFAULTS["meta_batch_size"])
    p.add_argument("--fast-batch-size", type=int, default=DEFAULTS["fast_batch_size"], help="trajectories per task")
    p.add_argument("--horizon", type=int, default=None,
                   help="episode horizon (default: the registration's max_episode_steps, 200 for the built-ins)")
    p.add_argument("--inner-lr", type=float, default=DEFAULTS["inner_lr"], help="MAML's alpha (see --step-rule)")
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--step-rule", choices=("tableau", "fixed"), default="tableau")
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--hidden-sizes", default=",".join(map(str, DEFAULTS["hidden"])),
                   help="policy hidden layer widths, comma separated")
    p.add_argument("--activation", choices=("relu", "tanh"), default=DEFAULTS["activation"])
    p.add_argument("--max-kl", type=float, default=DEFAULTS["max_kl"])
    p.add_argument("--fvp-subsample", type=float, default=0.2,
                   help="fraction of steps the Fisher-vector product uses (1.0: exact on all data; 0.2, as "
                        "OpenAI Baselines' TRPO; gradient and line search always use all data)")
    p.add_argument("--num-workers", type=int, default=1, help="env worker processes (1: in-process)")
    p.add_argument("--sampler", choices=("auto", "batched", "gym"), default="auto",
                   help="auto: the batched sampler (or a family's torch twin); gym: the slow reference loop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--logdir", default=None, help="run directory (default runs/<family>-<method>-s<seed>)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--checkpoint-interval", type=int, default=5)
    p.add_argument("--video-interval", type=int, default=25, help="iterations between videos (0: none)")
    p.add_argument("--video-tasks", type=int, default=3, help="tasks shown side by side")
    p.add_argument("--video-every", type=int, default=2, help="render every k-th step")
    p.add_argument("--video-horizon", type=int, default=None, help="steps per video (default: the horizon)")
    p.add_argument("--video-size", default="160x120", help="frame size WxH per task")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="under torchrun: collective timeout (default $RKMETA_DIST_TIMEOUT or 120); keep it above "
                        "the time rank 0 takes to render a video")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--verbose", action="store_true", help="print the logger table every iteration")
    return p.parse_args(argv)


def import_modules(names: list[str]) -> None:
    """Import every ``--module`` (their ``gymnasium.register`` calls run), from the current directory too, as
    ``python -m`` would (``python scripts/train_locomotion.py`` puts only ``scripts/`` on the path)."""
    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:
            raise ValueError(f"--module {name}: cannot import it ({type(err).__name__}: {err}); it must be "
                             f"importable from here (in the current directory, installed, or on PYTHONPATH)") from err


def resolve_env(name: str) -> str:
    """A family name or a registered id -> the registered id; a clear error (with the ``--module`` hint)."""
    import gymnasium as gym

    if name in LOCOMOTION_IDS:
        return LOCOMOTION_IDS[name]
    if name in gym.registry:
        return name
    candidates = [*LOCOMOTION_IDS, *gym.registry.keys()]
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"--env {name!r} is not a built-in family ({', '.join(LOCOMOTION_IDS)}) nor a registered "
                     f"Gymnasium id.{hint} For a family of your own, pass --module your_package.your_envs (the "
                     f"module whose gymnasium.register call registers {name!r}).")


def family_name(env_id: str) -> str:
    base = env_id.split("/")[-1]
    return base.rsplit("-v", 1)[0]


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--video-size must look like 160x120, got {text!r}") from None
    check_positive("video width", w, integer=True)
    check_positive("video height", h, integer=True)
    return w, h


def build(args: argparse.Namespace, dist: DistInfo | None = None) -> tuple[MetaTRPO, str]:
    """Validate the flags, import ``--module``s, resolve ``--env`` and build the model (all before any work;
    ``dist``: this process's place under torchrun)."""
    check_positive("iterations", args.iterations, integer=True)
    check_positive("meta_batch_size", args.meta_batch_size, integer=True)
    check_positive("fast_batch_size", args.fast_batch_size, integer=True)
    check_positive("inner_lr", args.inner_lr)
    check_positive("inner_steps", args.inner_steps, integer=True)
    check_positive("max_kl", args.max_kl)
    check_positive("checkpoint_interval", args.checkpoint_interval, integer=True)
    if args.time_budget is not None:
        check_positive("time_budget", args.time_budget)
    check_positive("num_workers", args.num_workers, integer=True)
    check_positive("video_interval", args.video_interval, integer=True, allow_zero=True)
    check_positive("video_tasks", args.video_tasks, integer=True)
    check_positive("video_every", args.video_every, integer=True)
    if args.horizon is not None:
        check_positive("horizon", args.horizon, integer=True)
    if args.video_horizon is not None:
        check_positive("video_horizon", args.video_horizon, integer=True)
    parse_size(args.video_size)
    if not 0 < args.fvp_subsample <= 1:
        raise ValueError(f"fvp_subsample must be in (0, 1], got {args.fvp_subsample}")
    try:
        hidden = tuple(int(h) for h in args.hidden_sizes.split(",") if h.strip())
    except ValueError:
        raise ValueError(f"--hidden-sizes must be comma-separated integers, got {args.hidden_sizes!r}") from None
    if not hidden or min(hidden) < 1:
        raise ValueError(f"--hidden-sizes must be comma-separated positive integers, got {args.hidden_sizes!r}")
    tab = get_tableau(args.method)
    if tab.stages > 2:
        raise ValueError(f"meta-RL supports one- and two-stage methods; {tab.name} has {tab.stages} stages")
    import_modules(args.module)
    env_id = resolve_env(args.env)
    model = MetaTRPO(
        "MlpPolicy", env_id, method=args.method, meta_batch_size=args.meta_batch_size,
        fast_batch_size=args.fast_batch_size, inner_lr=args.inner_lr, inner_steps=args.inner_steps,
        step_rule=args.step_rule, first_order=args.first_order, max_kl=args.max_kl, seed=args.seed,
        device=args.device, fvp_subsample=args.fvp_subsample, horizon=args.horizon,
        policy_kwargs={"hidden_sizes": hidden, "activation": args.activation}, sampler=args.sampler,
        num_workers=args.num_workers, dist=dist,
    )
    return model, env_id


# ---- videos -----------------------------------------------------------------------------------------------
def renderable(model: MetaTRPO) -> bool:
    """Whether the family is a MuJoCo env that :mod:`rkmeta_rl.video` can render offscreen."""
    base = model.env.unwrapped
    return model.env_id is not None and hasattr(base, "model") and hasattr(base, "data")


def _mean_fn(model: MetaTRPO, params: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    dtype = model.policy.log_std.dtype

    def fn(obs: torch.Tensor) -> torch.Tensor:
        return model.policy.mean(params, obs.to(device=model.device, dtype=dtype))

    return fn


def log_videos(model: MetaTRPO, tasks: list[Any], it: int, args: argparse.Namespace) -> float:
    """Render the mean policy on ``tasks`` before and after one inner step; returns the seconds it took.

    Training's random streams are untouched: adaptation samples with its own torch generator and the sampler's
    env-seed stream is saved and restored around it; rendering resets its own env instances with fixed seeds.
    """
    t0 = time.perf_counter()
    width, height = parse_size(args.video_size)
    horizon = args.video_horizon or model.sampler.horizon
    params = {k: v.detach() for k, v in model.policy.params().items()}
    state = model.rng_state()
    try:
        eps = model.sampler.sample(tasks, params, model.fast_batch_size,
                                   torch.Generator(device=model.device).manual_seed(30_000 + it))
        eps.compute_advantages(model.baseline, model.gamma, model.gae_lambda, model.normalize_advantages)
        adapted = model.meta_step.adapt(params, [eps.flat()])
    finally:
        model.set_rng_state(state)
    fps = 1.0 / (model.env.unwrapped.dt * args.video_every) if hasattr(model.env.unwrapped, "dt") else 20.0
    stages = (("pre_adaptation", [_mean_fn(model, params)] * len(tasks)),
              ("post_adaptation", [_mean_fn(model, {k: v[i] for k, v in adapted.items()})
                                   for i in range(len(tasks))]))
    for name, fns in stages:
        frames = rk_video.render_task_rollouts(model.env_id, tasks, fns, horizon=horizon, width=width,
                                               height=height, seed=40_000, every=args.video_every)
        rk_video.log_rollout_video(model.logger, f"video/{name}", frames, step=it, fps=fps)
    return time.perf_counter() - t0


# ---- main -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    """Train (under torchrun: this rank's part of a data-parallel run); returns the metrics."""
    args = parse_args(argv)
    set_threads(args.threads)
    try:
        dist = init_distributed(args.device, timeout_s=args.dist_timeout)
        check_positive("meta_batch_size", args.meta_batch_size, integer=True)
        split_batch(args.meta_batch_size, dist.rank, dist.world_size)
    except ValueError as err:
        destroy()
        sys.exit(f"error: {err}")
    try:
        return _run(args, dist)
    finally:
        destroy()


def _run(args: argparse.Namespace, dist: DistInfo) -> dict:
    try:
        model, env_id = build(args, dist)
    except (ValueError, RuntimeError, TaskFamilyError) as err:
        sys.exit(f"error: {err}")
    logdir = args.logdir or os.path.join("runs", f"{family_name(env_id)}-{model.tableau.name}-s{args.seed}")
    history: list[dict[str, float]] = []
    elapsed = 0.0
    if args.resume:
        try:
            model, history, elapsed = resume_run(logdir, model, RESUME_KEYS, dist, args.device,
                                                 num_workers=args.num_workers)
        except ValueError as err:
            sys.exit(f"error: {err}")
        if model.env_id != env_id:
            sys.exit(f"error: --resume: the checkpoint was trained on {model.env_id!r}, this run asks for {env_id!r}")
    if dist.is_main:
        os.makedirs(logdir, exist_ok=True)
    # only rank 0 logs and renders; the other ranks get a logger that writes nowhere
    model.set_logger(make_logger(logdir if dist.is_main else None, resume=args.resume, verbose=args.verbose))
    videos = args.video_interval > 0 and dist.is_main
    if videos and not renderable(model):
        _log.warning("%s is not a MuJoCo env: no videos", env_id)
        videos = False
    # tasks of the videos, drawn from their own stream (training's is untouched)
    video_tasks = model.sampler.sample_tasks(args.video_tasks, np.random.default_rng(10_000 + args.seed)) \
        if videos else []

    def video(it: int) -> None:
        if videos and (it % args.video_interval == 0 or it == 1):
            model.logger.record("time/video_seconds", log_videos(model, video_tasks, it, args))

    elapsed, stopped_by_budget = train_loop(
        model, args.iterations, logdir, dist, history, elapsed, checkpoint_interval=args.checkpoint_interval,
        progress=not args.no_progress, desc=f"{family_name(env_id)}[{model.tableau.name}]", on_iteration=video,
        time_budget_min=args.time_budget, checkpoint_extra={"env": env_id})
    metrics = run_summary(model, history, elapsed, dist)
    metrics.update({"env": env_id, "horizon": model.sampler.horizon, "fvp_subsample": args.fvp_subsample,
                    "num_workers": args.num_workers, "seed": args.seed, "stopped_by_time_budget": stopped_by_budget})
    model.logger.close()
    model.close()
    if dist.is_main:
        write_json_atomic(os.path.join(logdir, "metrics.json"), metrics)
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
    return metrics


if __name__ == "__main__":
    main()
