#!/usr/bin/env python
"""Where the time of one few-shot meta-iteration goes: matrix products against everything else, and the
operations that take the most.

The setting of ``bench_fewshot.py`` (Omniglot-shaped 5-way 1-shot tasks of uniform random images, meta-batch
32, second-order midpoint, one inner step, alpha 0.4, strided conv4 with 64 filters, one torch thread) on the
analytic or the task-batched path, whose products are all matrix products (the loop's and vmap's convolutions
are not). Three measurements, interleaved iteration by iteration in one process:

* ``plain``: the meta-gradient under a dispatch mode that only passes every operation through (so that both
  timed variants carry the same per-operation Python overhead);
* ``no_products``: the same, with every matrix product (``bmm``, ``baddbmm``, ``mm``, ``addmm``) answered by an
  empty tensor of its result's shape: the time of everything but the products (the values are garbage; only
  the time counts);
* a per-operation timing of the plain program (each operation timed on its own: the sum exceeds the wall time
  by the timing's overhead), summed by operation and by operation and input shapes.

The products' floating-point operations come from ``torch.utils.flop_counter``; with ``plain - no_products``
they give the products' speed inside the iteration.

    python scripts/profile_fewshot.py [--path analytic] [--queries 1] [--iters 8] [--top 15]

Last line: JSON with ``plain_s_per_iter``, ``no_products_s_per_iter``, ``products_s``, ``products_share``,
``products_gflop``, ``products_gflops_in_iteration``, ``by_op_ms`` and ``top_ms`` (milliseconds per iteration).
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import statistics
import time
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from rkmeta_rl.common.allocator import retain_freed_memory
from rkmeta_rl.rk import meta_gradient
from rkmeta_rl.supervised.conv4 import conv4_losses, init_conv4
from rkmeta_rl.supervised.episodes import random_episodes

PRODUCTS = {"bmm", "baddbmm", "mm", "addmm"}


class _Mode(TorchDispatchMode):
    """Passes operations through; ``fake`` answers matrix products with empty tensors; ``timings`` times each."""

    def __init__(self, fake: bool = False, timings: dict[tuple[str, str], list[float]] | None = None) -> None:
        super().__init__()
        self.fake, self.timings = fake, timings

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        op = func.overloadpacket.__name__
        name = op.rstrip("_")
        if self.fake and name in PRODUCTS:
            if op.endswith("_"):  # in place (baddbmm_, addmm_): the accumulator, untouched
                return args[0]
            if kwargs and "out" in kwargs:
                return kwargs["out"]
            a, b = (args[0], args[1]) if name in ("bmm", "mm") else (args[1], args[2])
            return a.new_empty(*a.shape[:-1], b.shape[-1])
        if self.timings is None:
            return func(*args, **(kwargs or {}))
        t = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        shapes = "x".join(str(list(a.shape)) for a in args if isinstance(a, torch.Tensor))
        self.timings[(name, shapes)].append(time.perf_counter() - t)
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", choices=("analytic", "batched"), default="analytic")
    p.add_argument("--queries", type=int, default=1)
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--top", type=int, default=15, help="operations (with their shapes) listed in top_ms")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.iters < 1 or args.queries < 1 or args.meta_batch < 1 or args.warmup < 0:
        p.error("--iters, --queries and --meta-batch must be >= 1, --warmup >= 0")
    torch.set_num_threads(1)
    retain_freed_memory()  # as the training commands do
    g = torch.Generator().manual_seed(args.seed)
    ways = 5
    batches = [random_episodes(args.meta_batch, ways, 1, args.queries, g) for _ in range(4)]
    init = init_conv4(1, ways, filters=64, pool="stride", image_size=28, generator=g)
    losses = conv4_losses("stride")

    def step(i: int) -> None:
        meta_gradient(init, *losses, batches[i % len(batches)], "midpoint", 0.4, 1, path=args.path)

    with FlopCounterMode(display=False) as flops:
        step(0)
    product_flop = sum(v for k, v in flops.get_flop_counts()["Global"].items()
                       if k.__name__.rstrip("_").split(".")[0] in PRODUCTS)

    times: dict[str, list[float]] = {"plain": [], "no_products": []}
    for i in range(args.warmup + args.iters):
        for variant in (("plain", "no_products") if i % 2 == 0 else ("no_products", "plain")):
            with _Mode(fake=variant == "no_products"):
                t0 = time.perf_counter()
                step(i)
                dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[variant].append(dt)
    timings: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    n_timed = max(2, args.iters // 2)
    with _Mode(timings=timings):
        for i in range(n_timed):
            step(i)
    med = {k: statistics.median(v) for k, v in times.items()}
    products_s = med["plain"] - med["no_products"]
    by_op: dict[str, float] = collections.defaultdict(float)
    for (name, _), v in timings.items():
        by_op[name] += sum(v)
    top = sorted(timings.items(), key=lambda kv: -sum(kv[1]))[:args.top]
    print(json.dumps({
        "path": args.path, "queries": args.queries, "meta_batch": args.meta_batch,
        "plain_s_per_iter": round(med["plain"], 4), "no_products_s_per_iter": round(med["no_products"], 4),
        "products_s": round(products_s, 4), "products_share": round(products_s / med["plain"], 3),
        "products_gflop": round(product_flop / 1e9, 2),
        "products_gflops_in_iteration": round(product_flop / 1e9 / products_s, 1) if products_s > 0 else None,
        "by_op_ms": {k: round(v / n_timed * 1e3, 1) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:20]},
        "top_ms": [{"op": name, "shapes": shapes, "calls": len(v) // n_timed, "ms": round(sum(v) / n_timed * 1e3, 2)}
                   for (name, shapes), v in top],
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
