#!/usr/bin/env python
"""Benchmark: seconds per second-order meta-iteration on Omniglot 5-way 1-shot, vmap path vs loop path.

One meta-iteration = the second-order RK meta-gradient (midpoint = MAML, Finn et al., 2017; one inner step,
alpha 0.4) over a meta-batch of 32 tasks of 5-way 1-shot with 15 queries per class, on the strided conv4 with
64 filters (docs/protocols.md), plus an Adam step. Task sampling is outside the timed region; both paths see
the same batches. The paths alternate iteration by iteration (order flipped every iteration) in one process
with one torch thread, after a few warm-up iterations each; the median is reported.

    python scripts/bench_fewshot.py [--data-root DIR] [--random-images] [--iters 6]

Last line: JSON with ``loop_s_per_iter``, ``vectorized_s_per_iter`` (medians), ``chosen``
(``rkmeta_rl.rk.choose_path(params)``, what ``path="auto"`` takes) and ``chosen_is_faster``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from rkmeta_rl.data import omniglot_root
from rkmeta_rl.rk import choose_path, meta_gradient
from rkmeta_rl.supervised.conv4 import conv4_losses, init_conv4
from rkmeta_rl.supervised.episodes import EpisodeSampler, TaskBatch
from rkmeta_rl.supervised.omniglot import load_omniglot, omniglot_splits

PATHS = ("loop", "vmap")


def batches(args: argparse.Namespace, n: int) -> list[TaskBatch]:
    """``n`` meta-batches of real Omniglot training tasks, or of uniform random images of the same shape."""
    if args.random_images:
        g = torch.Generator().manual_seed(args.seed)
        labels = torch.arange(args.ways)
        out = []
        for _ in range(n):
            out.append({"xs": torch.rand(args.meta_batch, args.ways * args.shots, 1, 28, 28, generator=g),
                        "ys": labels.repeat_interleave(args.shots).repeat(args.meta_batch, 1),
                        "xq": torch.rand(args.meta_batch, args.ways * args.queries, 1, 28, 28, generator=g),
                        "yq": labels.repeat_interleave(args.queries).repeat(args.meta_batch, 1)})
        return out
    t0 = time.perf_counter()
    data = load_omniglot(omniglot_root(args.data_root), 28, cache_dir=args.cache_dir)
    print(f"Omniglot loaded in {time.perf_counter() - t0:.1f} s ({len(data.images)} images)", flush=True)
    sampler = EpisodeSampler(omniglot_splits(data).train, args.ways, args.shots, args.queries,
                             seed=args.seed)
    return [sampler.sample(args.meta_batch) for _ in range(n)]


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
    args = p.parse_args()
    torch.set_num_threads(1)

    data = batches(args, args.warmup + args.iters)
    init = init_conv4(1, args.ways, filters=args.filters, pool="stride", image_size=28,
                      generator=torch.Generator().manual_seed(args.seed))
    support_loss, query_loss = conv4_losses("stride")
    params = {path: {k: v.clone().requires_grad_(True) for k, v in init.items()} for path in PATHS}
    optims = {path: torch.optim.Adam(params[path].values(), lr=1e-3) for path in PATHS}
    times: dict[str, list[float]] = {path: [] for path in PATHS}

    for it, batch in enumerate(data):
        order = PATHS if it % 2 == 0 else PATHS[::-1]
        for path in order:
            t = time.perf_counter()
            grads, stats = meta_gradient(params[path], support_loss, query_loss, batch, "midpoint", args.inner_lr, 1,
                                         path=path)
            for k, v in params[path].items():
                v.grad = grads[k]
            optims[path].step()
            dt = time.perf_counter() - t
            if it >= args.warmup:
                times[path].append(dt)
            print(f"iter {it + 1}/{len(data)} {'(warm-up) ' if it < args.warmup else ''}{path}: {dt:.2f} s, "
                  f"query loss after adaptation {stats['query_loss_post']:.3f}", flush=True)

    loop_s, vmap_s = statistics.median(times["loop"]), statistics.median(times["vmap"])
    chosen = choose_path(init)
    result = {
        "loop_s_per_iter": round(loop_s, 4),
        "vectorized_s_per_iter": round(vmap_s, 4),
        "loop_s_per_iter_all": [round(x, 3) for x in times["loop"]],
        "vectorized_s_per_iter_all": [round(x, 3) for x in times["vmap"]],
        "vectorized_over_loop": round(vmap_s / loop_s, 3),
        "chosen": chosen,
        "chosen_is_faster": bool((loop_s < vmap_s) if chosen == "loop" else (vmap_s < loop_s)),
        "setting": {"ways": args.ways, "shots": args.shots, "queries": args.queries, "meta_batch": args.meta_batch,
                    "filters": args.filters, "pool": "stride", "second_order": True,
                    "data": "random" if args.random_images else "omniglot", "warmup": args.warmup,
                    "iters": args.iters},
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "numpy": np.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
