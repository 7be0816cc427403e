#!/usr/bin/env python
"""Benchmark: second-order meta-iterations per second on the sinusoid setting, vectorised vs loop path.

One meta-iteration = sample 25 tasks (K = 10 support + 10 query), the second-order RK meta-gradient
(midpoint, one inner step), and an Adam step: exactly what ``MetaTrainer.step`` does. The paths are run in
interleaved blocks in one process with one torch thread; the median block rate is reported.

    python scripts/bench_meta_gradient.py [--rounds 7] [--block 200]

Last line: JSON with ``vectorized_it_per_s`` (the compiled vmap path the trainer uses by default),
``vectorized_eager_it_per_s`` (vmap without torch.compile), ``loop_it_per_s`` and ``speedup``
(vectorized / loop).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem
from rkmeta_rl.supervised.trainer import MetaTrainConfig, MetaTrainer


def make(path: str, compile: bool, method: str) -> MetaTrainer:
    cfg = MetaTrainConfig(method=method, meta_batch_size=25, path=path, compile=compile, device="cpu",
                          iterations=10**9, threads=1)
    return MetaTrainer(SinusoidProblem(), cfg, logdir=None)


def block(tr: MetaTrainer, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        tr.step()
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--block", type=int, default=200, help="iterations per timed block (loop: block / 5)")
    p.add_argument("--method", default="midpoint")
    args = p.parse_args()
    torch.set_num_threads(1)
    trainers = {"vectorized": make("vmap", True, args.method), "vectorized_eager": make("vmap", False, args.method),
                "loop": make("loop", False, args.method)}
    t0 = time.perf_counter()
    for tr in trainers.values():  # warm-up (the compiled path compiles here)
        block(tr, 20)
    compile_s = time.perf_counter() - t0
    rates: dict[str, list[float]] = {k: [] for k in trainers}
    for r in range(args.rounds):
        for name, tr in trainers.items():
            n = args.block if name != "loop" else max(10, args.block // 5)
            rates[name].append(block(tr, n))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.0f} it/s" for k, v in rates.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        "setting": "sinusoid 1-40-40-1, meta-batch 25, K=10, 1 inner step, second order, Adam step",
        "method": args.method,
        "vectorized_it_per_s": round(med["vectorized"], 1),
        "vectorized_eager_it_per_s": round(med["vectorized_eager"], 1),
        "loop_it_per_s": round(med["loop"], 1),
        "speedup": round(med["vectorized"] / med["loop"], 2),
        "speedup_eager": round(med["vectorized_eager"] / med["loop"], 2),
        "warmup_and_compile_s": round(compile_s, 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
