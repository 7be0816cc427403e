#!/usr/bin/env python
"""Benchmark: seconds per meta-iteration with 1 and with 2 data-parallel processes (torchrun, gloo, CPU,
one torch thread per process).

    python scripts/bench_distributed.py [--trainer nav] [--iters 3]          # the default
    python scripts/bench_distributed.py --trainer sinusoid [--iters 20] [--meta-batch-size 50]

``--trainer nav`` (default): data-parallel :class:`~rkmeta_rl.rl.algorithm.MetaTRPO` on 2D navigation in the
reference setting of ``bench_nav.py`` (:data:`~rkmeta_rl.rl.algorithm.REFERENCE_NAV_KWARGS`: 20 tasks x 20
trajectories, 2x64 tanh policy, ``fvp_subsample=0.2`` as ``train_nav.py``), second order; each rank samples
its share of the tasks, and the TRPO gradient, every Fisher-vector product and the line-search values are
all-reduced (one small collective each; about 10 CG + a few line-search collectives per iteration).
``--trainer sinusoid``: the supervised :class:`~rkmeta_rl.supervised.trainer.MetaTrainer` on sinusoid
regression, second-order, meta-batch 50 split over the processes (each rank computes the meta-gradient of its
tasks, one all-reduce averages them, every rank takes the Adam step).

Each setting runs in its own ``torchrun --standalone`` launch: ``--warmup`` untimed meta-iterations, then
``--iters`` timed ones, started and stopped together on every rank (barriers), reported by rank 0. The speedup
on a machine with fewer free cores than processes is meaningless: the JSON records ``os.cpu_count()`` and the
1-minute load average at the start.

Last line: JSON with ``seconds_per_iteration_1``, ``seconds_per_iteration_2``, ``speedup``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import torch

SCRIPT = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(SCRIPT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainer", choices=("nav", "sinusoid"), default="nav")
    p.add_argument("--method", default="midpoint")
    p.add_argument("--meta-batch-size", type=int, default=None, help="default: 20 (nav), 50 (sinusoid)")
    p.add_argument("--first-order", action="store_true", help="default: second order")
    p.add_argument("--iters", type=int, default=None, help="timed meta-iterations per setting (default: 3 for "
                   "nav, 20 for sinusoid)")
    p.add_argument("--warmup", type=int, default=None, help="untimed meta-iterations first (default 1 / 3)")
    p.add_argument("--path", choices=("auto", "vmap", "loop"), default="auto", help="engine execution path")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per launch")
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)  # set in the torchrun workers
    return p.parse_args(argv)


def _defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the per-trainer defaults of ``--meta-batch-size``, ``--iters`` and ``--warmup``."""
    nav = args.trainer == "nav"
    if args.meta_batch_size is None:
        args.meta_batch_size = 20 if nav else 50
    if args.iters is None:
        args.iters = 3 if nav else 20
    if args.warmup is None:
        args.warmup = 1 if nav else 3
    return args


def worker(args: argparse.Namespace) -> None:
    """One rank of a launch: time ``--iters`` meta-iterations and (rank 0) write the result to ``--worker-out``."""
    torch.set_num_threads(1)
    from rkmeta_rl.distributed import barrier, destroy, init_distributed

    info = init_distributed("cpu")
    try:
        step: Callable[[], Any]
        if args.trainer == "nav":
            from rkmeta_rl.rl.algorithm import REFERENCE_NAV_KWARGS, MetaTRPO

            kwargs = dict(REFERENCE_NAV_KWARGS, meta_batch_size=args.meta_batch_size)
            model = MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", method=args.method, fvp_subsample=0.2,
                             first_order=args.first_order, device="cpu", dist=info, **kwargs)
            step, local, close = model.train_iteration, model.local_batch_size, model.close
        else:
            from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem
            from rkmeta_rl.supervised.trainer import MetaTrainConfig, MetaTrainer

            cfg = MetaTrainConfig(method=args.method, iterations=args.warmup + args.iters,
                                  meta_batch_size=args.meta_batch_size, first_order=args.first_order, device="cpu",
                                  path=args.path, compile=False, threads=1, eval_interval=0)
            tr = MetaTrainer(SinusoidProblem(), cfg, logdir=None, dist=info)
            step, local, close = tr.step, tr.local_batch_size, tr.close
        for _ in range(args.warmup):
            step()
        barrier()
        t0 = time.perf_counter()
        per_iter: list[float] = []
        for _ in range(args.iters):
            t = time.perf_counter()
            step()
            per_iter.append(time.perf_counter() - t)
        barrier()
        total = time.perf_counter() - t0
        if info.is_main:
            out = {"world_size": info.world_size, "seconds_per_iteration": total / args.iters,
                   "min_iteration_s": min(per_iter), "local_batch_size": local}
            with open(args.worker_out, "w") as fh:
                json.dump(out, fh)
        close()
    finally:
        destroy()


def launch(args: argparse.Namespace, nproc: int, out_path: str) -> dict[str, Any]:
    """Run this script's worker under ``torchrun --standalone --nproc_per_node=nproc``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", SCRIPT,
           "--trainer", args.trainer, "--method", args.method, "--meta-batch-size", str(args.meta_batch_size),
           "--iters", str(args.iters), "--warmup", str(args.warmup), "--path", args.path, "--worker-out", out_path]
    if args.first_order:
        cmd.append("--first-order")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"error: the {nproc}-process launch failed with exit code {proc.returncode}")
    with open(out_path) as fh:
        return json.load(fh)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the launches (or, inside one, this rank's worker); returns the result dict printed as JSON."""
    args = _defaults(parse_args(argv))
    if args.worker_out is not None:
        worker(args)
        return {}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    res: dict[str, Any] = {"trainer": args.trainer, "method": args.method, "meta_batch_size": args.meta_batch_size,
                           "second_order": not args.first_order, "iters": args.iters, "path": args.path,
                           "cpu_count": os.cpu_count(), "load_average_1min_at_start": round(load, 2),
                           "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.procs:
            r = launch(args, n, os.path.join(tmp, f"bench{n}.json"))
            res[f"seconds_per_iteration_{n}"] = round(r["seconds_per_iteration"], 5)
            res[f"min_iteration_s_{n}"] = round(r["min_iteration_s"], 5)
            print(f"{n} process(es): {r['seconds_per_iteration']:.4f} s/iteration "
                  f"({r['local_batch_size']} tasks per rank)", flush=True)
    if 1 in args.procs and 2 in args.procs:
        res["speedup"] = round(res["seconds_per_iteration_1"] / res["seconds_per_iteration_2"], 3)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
