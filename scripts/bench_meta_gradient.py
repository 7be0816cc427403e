#!/usr/bin/env python
"""Benchmark: second-order meta-iterations per second on the sinusoid setting, the library's default path against
the plain per-task loop.

One meta-iteration = sample 25 tasks (K = 10 support + 10 query), the second-order RK meta-gradient
(midpoint, one inner step), and an Adam step: exactly what ``MetaTrainer.step`` does. Three trainers, one torch
thread, in one process:

* ``default``: ``MetaTrainConfig`` with no path or compile setting, so ``meta_gradient``'s defaults decide
  (``path="auto"``, ``compile="auto"``: the eager vmap program until it has run a few seconds, then the compiled
  one; :mod:`rkmeta_rl.rk.autocompile`);
* ``eager``: the vmap path with ``compile=False``;
* ``loop``: the plain per-task autograd loop (``path="loop"``), the reference.

Warm-up runs every trainer, and the default one until it has compiled by itself (``--warmup-max-s``); then the
trainers run in interleaved timed blocks and the median block rate of each is reported.

    python scripts/bench_meta_gradient.py [--rounds 7] [--block 200]

Last line: JSON with ``default_it_per_s``, ``eager_it_per_s``, ``loop_it_per_s``, ``default_speedup_vs_loop``
(the figure the library promises: at least 7), ``eager_speedup_vs_loop``, ``default_compiled`` (whether the
default path had compiled itself after warm-up) and ``default_warmup_s`` (seconds of eager calls and compiling
before that).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from rkmeta_rl.rk import autocompile
from rkmeta_rl.supervised.config import MetaTrainConfig
from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem
from rkmeta_rl.supervised.trainer import MetaTrainer


def make(method: str, **settings: object) -> MetaTrainer:
    cfg = MetaTrainConfig(method=method, meta_batch_size=25, device="cpu", iterations=10**9, threads=1,
                          **settings)  # type: ignore[arg-type]
    return MetaTrainer(SinusoidProblem(), cfg, logdir=None)


def block(tr: MetaTrainer, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        tr.step()
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--block", type=int, default=200, help="iterations per timed block (loop: block / 10)")
    p.add_argument("--method", default="midpoint")
    p.add_argument("--warmup-max-s", type=float, default=300.0,
                   help="at most this many seconds of default-path warm-up waiting for it to compile itself")
    args = p.parse_args()
    torch.set_num_threads(1)
    trainers = {"default": make(args.method), "eager": make(args.method, path="vmap", compile=False),
                "loop": make(args.method, path="loop")}
    t0 = time.perf_counter()
    before = autocompile.compiled_programs()
    steps = 0
    while autocompile.compiled_programs() == before and time.perf_counter() - t0 < args.warmup_max_s:
        trainers["default"].step()
        steps += 1
    warmup_s = time.perf_counter() - t0
    compiled = autocompile.compiled_programs() > before
    print(f"default path: {'compiled by itself' if compiled else 'NOT compiled'} after {steps} iterations, "
          f"{warmup_s:.1f} s", flush=True)
    for tr in trainers.values():
        block(tr, 10)
    rates: dict[str, list[float]] = {k: [] for k in trainers}
    for r in range(args.rounds):
        for name, tr in trainers.items():
            n = args.block if name != "loop" else max(10, args.block // 10)
            rates[name].append(block(tr, n))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.0f} it/s" for k, v in rates.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    out = {
        "setting": "sinusoid 1-40-40-1, meta-batch 25, K=10, 1 inner step, second order, Adam step",
        "method": args.method,
        "default_it_per_s": round(med["default"], 1),
        "eager_it_per_s": round(med["eager"], 1),
        "loop_it_per_s": round(med["loop"], 1),
        "default_speedup_vs_loop": round(med["default"] / med["loop"], 2),
        "eager_speedup_vs_loop": round(med["eager"] / med["loop"], 2),
        "default_compiled": compiled,
        "default_warmup_iterations": steps,
        "default_warmup_s": round(warmup_s, 1),
        "rounds": args.rounds,
        "RKMETA_COMPILE": os.environ.get(autocompile.ENV_VAR),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
