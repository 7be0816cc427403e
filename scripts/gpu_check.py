#!/usr/bin/env python
"""GPU check: short runs of every trainer on CUDA, seconds per meta-iteration next to the CPU figure.

    python scripts/gpu_check.py                       # all trainers, 3 timed iterations each
    python scripts/gpu_check.py --trainers nav locomotion --iters 5
    python scripts/gpu_check.py --fewshot-data omniglot [--omniglot-root DIR]   # default: the data root

Trainers (each built through the library, exactly as its training script builds it, in a small setting):

* ``sinusoid``: :class:`~rkmeta_rl.supervised.trainer.MetaTrainer` on sinusoid regression, second order,
  meta-batch 25.
* ``fewshot``: the same trainer on 5-way 1-shot Conv-4 few-shot classification, meta-batch 32, on random
  28x28 images (default; the timing does not depend on the pixels) or on Omniglot (``--fewshot-data``).
* ``nav``: :class:`~rkmeta_rl.rl.algorithm.MetaTRPO` on 2D navigation in the reference setting (20 tasks x
  20 trajectories, 2x64 tanh), ``fvp_subsample=0.2`` as ``train_nav.py``; the batched torch twin steps on the
  device.
* ``locomotion``: MetaTRPO on HalfCheetahVel (10 tasks x 5 trajectories, horizon 100); MuJoCo steps on the
  CPU, one batched host-to-device copy per time step.

Each trainer runs ``--warmup`` untimed meta-iterations (CUDA start-up, kernel selection), then ``--iters``
timed ones (``torch.cuda.synchronize`` before reading the clock), on CUDA and then on the CPU (one thread).
On a machine without CUDA it says so and exits 0. Last line: JSON with ``cuda_available``, ``device`` and per
trainer ``{"cuda_s_per_iter", "cpu_s_per_iter", "speedup"}`` (or ``"error"`` when it failed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINERS = ("sinusoid", "fewshot", "nav", "locomotion")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainers", nargs="+", choices=TRAINERS, default=list(TRAINERS))
    p.add_argument("--iters", type=int, default=3, help="timed meta-iterations per trainer and device")
    p.add_argument("--warmup", type=int, default=1, help="untimed meta-iterations first")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU runs")
    p.add_argument("--fewshot-data", choices=("random", "omniglot"), default="random")
    p.add_argument("--omniglot-root", default=None,
                   help="Omniglot folder or data root (default: $RKMETA_DATA or ~/.cache/rkmeta_rl/data; "
                        "get it with: python -m rkmeta_rl.data omniglot)")
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _random_split(classes: int, per_class: int, seed: int) -> Any:
    """A :class:`~rkmeta_rl.supervised.class_split.ClassSplit` of random 28x28 grey images."""
    from rkmeta_rl.supervised.class_split import ClassSplit

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes * per_class, 28, 28, 1), dtype=torch.uint8, generator=g)
    members = tuple(torch.arange(c * per_class, (c + 1) * per_class) for c in range(classes))
    return ClassSplit(images, members, tuple(f"random/{c}" for c in range(classes)))


def make_step(name: str, device: str, args: argparse.Namespace) -> tuple[Callable[[], Any], Callable[[], None]]:
    """``(one meta-iteration, close)`` of trainer ``name`` on ``device``."""
    if name in ("sinusoid", "fewshot"):
        from rkmeta_rl.supervised.trainer import MetaTrainConfig, MetaTrainer

        if name == "sinusoid":
            from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem

            problem: Any = SinusoidProblem()
            cfg = MetaTrainConfig(method="ralston", meta_batch_size=25, device=device, compile=False, threads=1,
                                  eval_interval=0)
        else:
            from rkmeta_rl.supervised.fewshot_problem import FewShotProblem

            if args.fewshot_data == "omniglot":
                from rkmeta_rl.data import omniglot_root
                from rkmeta_rl.supervised.omniglot import load_omniglot_splits

                splits = load_omniglot_splits(omniglot_root(args.omniglot_root), progress=False)
                train, test = splits.train, splits.test
            else:
                train, test = _random_split(64, 20, 0), _random_split(20, 20, 1)
            problem = FewShotProblem("omniglot", train, test, ways=5, shots=1, queries=15, filters=64, pool="stride")
            cfg = MetaTrainConfig(method="midpoint", meta_batch_size=32, inner_lr=0.4, inner_steps=1,
                                  test_inner_steps=3, device=device, compile=False, threads=1, eval_interval=0)
        tr = MetaTrainer(problem, cfg, logdir=None)
        return tr.step, tr.close
    from rkmeta_rl.rl.algorithm import REFERENCE_NAV_KWARGS, MetaTRPO

    if name == "nav":
        model = MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", method="ralston", fvp_subsample=0.2, device=device,
                         **REFERENCE_NAV_KWARGS)
    else:
        model = MetaTRPO("MlpPolicy", "rkmeta/HalfCheetahVel-v0", method="ralston", meta_batch_size=10,
                         fast_batch_size=5, horizon=100, inner_lr=0.1, fvp_subsample=0.2, device=device)
    return model.train_iteration, model.close


def time_trainer(name: str, device: str, args: argparse.Namespace) -> float:
    """Seconds per meta-iteration of ``name`` on ``device`` (after ``--warmup`` untimed ones)."""
    step, close = make_step(name, device, args)
    dev = torch.device(device)
    try:
        for _ in range(args.warmup):
            step()
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(args.iters):
            step()
        _sync(dev)
        return (time.perf_counter() - t0) / args.iters
    finally:
        close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the check; returns the dict printed as the JSON last line."""
    args = parse_args(argv)
    torch.set_num_threads(1)
    if not torch.cuda.is_available():
        out: dict[str, Any] = {"cuda_available": False,
                               "message": "no CUDA device on this machine: nothing to check (exit 0)"}
        print(out["message"])
        print(json.dumps(out))
        return out
    res: dict[str, Any] = {"cuda_available": True, "device": torch.cuda.get_device_name(0),
                           "torch": torch.__version__, "iters": args.iters, "warmup": args.warmup}
    failed = False
    for name in args.trainers:
        row: dict[str, Any] = {}
        for dev in ("cuda",) + (() if args.no_cpu else ("cpu",)):
            try:
                row[f"{dev}_s_per_iter"] = round(time_trainer(name, dev, args), 4)
            except Exception as err:  # noqa: BLE001 - report every trainer, then fail at the end
                failed = True
                row[f"{dev}_error"] = f"{type(err).__name__}: {err}"
                traceback.print_exc()
        if "cuda_s_per_iter" in row and "cpu_s_per_iter" in row:
            row["speedup"] = round(row["cpu_s_per_iter"] / row["cuda_s_per_iter"], 2)
        res[name] = row
        print(f"{name}: {row}", flush=True)
    print(json.dumps(res))
    if failed:
        sys.exit(1)
    return res


if __name__ == "__main__":
    main()
