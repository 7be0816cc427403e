#!/usr/bin/env python
"""Benchmark: seconds per second-order meta-iteration on Omniglot 5-way 1-shot: loop, vmap, batched, analytic.

One meta-iteration = the second-order RK meta-gradient (midpoint = MAML, Finn et al., 2017; one inner step,
alpha 0.4) over a meta-batch of 32 tasks of 5-way 1-shot with ``--queries`` query images per class (1: the
original MAML code's Omniglot training; 15 by default), on the strided conv4 with 64 filters
(docs/protocols.md), plus an Adam step. Task sampling is outside the timed region; every path sees the same
batches. The paths alternate iteration by iteration (order reversed every iteration) in one process with one
torch thread (``--threads N``: N; ``--threads 0``: what the training commands take without ``--threads``,
:func:`rkmeta_rl.utils.default_threads`), after a few warm-up iterations each; the median is reported, in
wall-clock and in process CPU seconds (the latter less disturbed by other processes on a shared machine; with
several threads it adds up theirs).

    python scripts/bench_fewshot.py [--data-root DIR] [--random-images] [--queries 1] [--iters 6]
    python scripts/bench_fewshot.py --random-images --queries 15 --paths analytic,analytic:all,analytic:4
    python scripts/bench_fewshot.py --queries 1 --paths loop,analytic --threads 0   # the commands' threads
    python scripts/bench_fewshot.py --queries 15 --paths loop,analytic --diagnostics both

Every meta-gradient also computes the forward-only diagnostics (query loss before, support loss after adaptation;
``meta_gradient``'s ``stats``) unless ``--diagnostics off``; ``--diagnostics both`` times each path both ways,
interleaved, the second as ``{path}/nodiag`` (the few-shot presets compute them every 10th iteration only,
``diagnostics_interval``).

A path may carry a chunk size, ``path:N`` (``N`` tasks per program, ``meta_gradient``'s ``chunk_size``) or
``path:all`` (every task in one program); a bare path takes ``meta_gradient``'s default (on the analytic path
:func:`rkmeta_rl.rk.analytic.default_chunk`). The loop path takes no chunk size.

Last line: JSON with ``{path}_s_per_iter`` (median wall seconds) and ``{path}_cpu_s_per_iter`` for each path,
``chosen`` (``rkmeta_rl.rk.choose_path(params, support_loss, query_loss, batch)``, what ``path="auto"``
takes),
``chosen_speedup_vs_loop`` (loop median over the chosen path's median, wall) and ``chosen_is_fastest``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from rkmeta_rl.common.allocator import retain_freed_memory
from rkmeta_rl.data import omniglot_root
from rkmeta_rl.rk import choose_path, meta_gradient
from rkmeta_rl.supervised.conv4 import conv4_losses, init_conv4
from rkmeta_rl.supervised.episodes import EpisodeSampler, TaskBatch, random_episodes
from rkmeta_rl.supervised.omniglot import load_omniglot, omniglot_splits
from rkmeta_rl.utils import default_threads, set_threads

PATHS = ("loop", "vmap", "batched", "analytic")


def batches(args: argparse.Namespace, n: int) -> list[TaskBatch]:
    """``n`` meta-batches of real Omniglot training tasks, or of uniform random images of the same shape."""
    if args.random_images:
        g = torch.Generator().manual_seed(args.seed)
        return [random_episodes(args.meta_batch, args.ways, args.shots, args.queries, g) for _ in range(n)]
    t0 = time.perf_counter()
    data = load_omniglot(omniglot_root(args.data_root), 28, cache_dir=args.cache_dir)
    print(f"Omniglot loaded in {time.perf_counter() - t0:.1f} s ({len(data.images)} images)", flush=True)
    sampler = EpisodeSampler(omniglot_splits(data).train, args.ways, args.shots, args.queries,
                             seed=args.seed)
    return [sampler.sample(args.meta_batch) for _ in range(n)]


def chunk_size(variant: str, meta_batch: int) -> int | None:
    """``meta_gradient``'s ``chunk_size`` for a ``--paths`` entry: ``path`` (None, the default), ``path:all``
    (the whole meta-batch) or ``path:N``."""
    path, _, chunk = variant.partition(":")
    if not chunk:
        return None
    if path == "loop":
        raise ValueError("the loop path takes no chunk size")
    if chunk == "all":
        return meta_batch
    if not chunk.isdigit() or int(chunk) < 1:
        raise ValueError(f"{variant!r}: the chunk size is a positive integer or 'all'")
    return int(chunk)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=None,
                   help="Omniglot folder or data root (default: $RKMETA_DATA or ~/.cache/rkmeta_rl/data)")
    p.add_argument("--cache-dir", type=Path, default=None, help="preprocessed-image cache (default ~/.cache/rkmeta_rl)")
    p.add_argument("--random-images", action="store_true", help="random images of the right shape instead of Omniglot")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations per path")
    p.add_argument("--iters", type=int, default=6, help="timed iterations per path")
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--filters", type=int, default=64)
    p.add_argument("--inner-lr", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1; 0: the training commands' default, all idle cores)")
    p.add_argument("--diagnostics", choices=("on", "off", "both"), default="on",
                   help="compute the forward-only diagnostics in each meta-gradient (both: time each path "
                        "with and without, as PATH and PATH/nodiag)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    args = p.parse_args()
    paths = tuple(args.paths.split(","))
    bad = [x for x in paths if x.partition(":")[0] not in PATHS]
    if bad or not paths:
        p.error(f"--paths: unknown path(s) {bad} (choose from {', '.join(PATHS)}, optionally with :N or :all)")
    try:
        chunks = {x: chunk_size(x, args.meta_batch) for x in paths}
    except ValueError as e:
        p.error(f"--paths: {e}")
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    set_threads(args.threads or default_threads())
    retain_freed_memory()  # as the training commands do

    if args.diagnostics == "both":
        paths = paths + tuple(f"{x}/nodiag" for x in paths)
        chunks.update({f"{x}/nodiag": chunks[x] for x in chunks})
    diagnostics = {x: args.diagnostics != "off" and not x.endswith("/nodiag") for x in paths}

    load_start = os.getloadavg()[0]
    data = batches(args, args.warmup + args.iters)
    init = init_conv4(1, args.ways, filters=args.filters, pool="stride", image_size=28,
                      generator=torch.Generator().manual_seed(args.seed))
    support_loss, query_loss = conv4_losses("stride")
    params = {path: {k: v.clone().requires_grad_(True) for k, v in init.items()} for path in paths}
    optims = {path: torch.optim.Adam(params[path].values(), lr=1e-3) for path in paths}
    times: dict[str, list[float]] = {path: [] for path in paths}
    cpu: dict[str, list[float]] = {path: [] for path in paths}

    for it, batch in enumerate(data):
        order = paths if it % 2 == 0 else paths[::-1]
        for path in order:
            t, c = time.perf_counter(), time.process_time()
            grads, stats = meta_gradient(params[path], support_loss, query_loss, batch, "midpoint", args.inner_lr, 1,
                                         path=path.partition(":")[0].partition("/")[0], chunk_size=chunks[path],
                                         stats=diagnostics[path])
            for k, v in params[path].items():
                v.grad = grads[k]
            optims[path].step()
            dt, dc = time.perf_counter() - t, time.process_time() - c
            if it >= args.warmup:
                times[path].append(dt)
                cpu[path].append(dc)
            print(f"iter {it + 1}/{len(data)} {'(warm-up) ' if it < args.warmup else ''}{path}: {dt:.2f} s, "
                  f"query loss after adaptation {stats['query_loss_post']:.3f}", flush=True)

    med = {path: statistics.median(times[path]) for path in paths}
    med_cpu = {path: statistics.median(cpu[path]) for path in paths}
    chosen = choose_path(init, support_loss, query_loss, data[0])
    result: dict[str, object] = {}
    for path in paths:
        result[f"{path}_s_per_iter"] = round(med[path], 4)
        result[f"{path}_cpu_s_per_iter"] = round(med_cpu[path], 4)
        result[f"{path}_s_per_iter_all"] = [round(x, 3) for x in times[path]]
    for path in paths:
        loop = "loop/nodiag" if path.endswith("/nodiag") else "loop"  # the loop computing the same statistics
        if loop in paths:
            result[f"{path}_speedup_vs_loop"] = round(med[loop] / med[path], 3)
            result[f"{path}_cpu_speedup_vs_loop"] = round(med_cpu[loop] / med_cpu[path], 3)
    result["chosen"] = chosen
    if chosen in paths:
        if "loop" in paths:
            result["chosen_speedup_vs_loop"] = round(med["loop"] / med[chosen], 3)
        same = [x for x in paths if not x.endswith("/nodiag")]  # the variants computing the same statistics
        result["chosen_is_fastest"] = bool(med[chosen] <= min(med[x] for x in same))
    result.update({
        "setting": {"ways": args.ways, "shots": args.shots, "queries": args.queries, "meta_batch": args.meta_batch,
                    "filters": args.filters, "pool": "stride", "second_order": True,
                    "data": "random" if args.random_images else "omniglot", "warmup": args.warmup,
                    "diagnostics": args.diagnostics,
                    "iters": args.iters},
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "numpy": np.__version__,
        # 1-minute load average of the machine before and after: other processes sharing the cores
        "loadavg_start": round(load_start, 2), "loadavg_end": round(os.getloadavg()[0], 2),
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
