#!/usr/bin/env python
"""Benchmark: learn2learn's MAML against rkmeta-rl on the paper's Omniglot protocol, the same maths in both.

One meta-iteration = the second-order MAML meta-gradient (one inner step, alpha 0.4) over a meta-batch of 32
tasks of 5-way 1-shot with 1 query image per class, on the strided conv4 (64 filters, batch norm on each batch's
own statistics, docs/protocols.md), plus an Adam step:

* ``learn2learn``: its documented MAML loop (``l2l.algorithms.MAML(model, lr=0.4)``; per task ``clone()``,
  ``adapt(support loss)``, the query loss divided by the meta-batch, ``backward()``), on a ``torch.nn`` conv4
  holding the same initial parameters;
* ``rkmeta``: ``rkmeta_rl.rk.meta_gradient`` with its defaults (``path="auto"``: the analytic path for this net);
* ``loop``: rkmeta-rl's plain per-task autograd loop (``path="loop"``), the reference of ``bench_fewshot.py``.

Before timing, the meta-gradients of the first batch are compared: learn2learn's and rkmeta-rl's must agree to
float32 rounding (``max_rel_diff``), so that both sides compute the same thing. Then the three alternate
iteration by iteration (order reversed every iteration) in one process with one torch thread, on the same
batches (uniform random images of Omniglot's shape: the time does not depend on the pixels), and the median is
reported.

learn2learn is not a dependency of rkmeta-rl. ``pip install learn2learn`` where it installs; its 0.2.0 source
does not build on Python 3.11 (its compiled data modules), so ``--learn2learn-src DIR`` takes an unpacked source
tree instead (``pip download learn2learn --no-deps --no-binary :all:`` and unpack it) and loads only the
pure-Python MAML (``learn2learn/utils`` and ``learn2learn/algorithms/{base_learner,maml}.py``), without the
package's ``__init__`` files that import the rest.

    python scripts/bench_peers.py [--learn2learn-src DIR] [--iters 8]

Last line: JSON with ``{side}_s_per_iter`` (median wall seconds), ``rkmeta_speedup_vs_learn2learn``,
``rkmeta_speedup_vs_loop``, ``learn2learn_vs_loop`` and ``max_rel_diff``; without learn2learn, ``{"learn2learn":
null, ...}`` with the reason and exit status 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from rkmeta_rl.common.allocator import retain_freed_memory
from rkmeta_rl.rk import choose_path, meta_gradient
from rkmeta_rl.supervised.conv4 import BLOCKS, conv4_losses, init_conv4

WAYS, SHOTS, QUERIES, META_BATCH, FILTERS, ALPHA = 5, 1, 1, 32, 64, 0.4


def load_learn2learn(src: Path | None) -> Any:
    """learn2learn's ``MAML`` class: from the installed package, or from an unpacked source tree ``src``."""
    if src is None:
        return importlib.import_module("learn2learn").algorithms.MAML
    root = src / "learn2learn" if (src / "learn2learn").is_dir() else src
    if not (root / "algorithms" / "maml.py").is_file():
        raise FileNotFoundError(f"--learn2learn-src: no learn2learn/algorithms/maml.py under {src}")
    # empty parent packages, so that their __init__ files (which import the compiled parts) do not run
    for name, path in (("learn2learn", root), ("learn2learn.algorithms", root / "algorithms")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]
        sys.modules[name] = pkg
    version: dict[str, Any] = {}
    if (root / "_version.py").is_file():
        exec((root / "_version.py").read_text(), version)
    sys.modules["learn2learn"].__version__ = version.get("__version__")
    return importlib.import_module("learn2learn.algorithms.maml").MAML


class Conv4(nn.Module):
    """The strided conv4 as ``torch.nn`` modules (what a learn2learn user writes), loaded with ``params``."""

    def __init__(self, params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(1, BLOCKS + 1):
            w = params[f"conv{i}.weight"]
            conv = nn.Conv2d(w.shape[1], w.shape[0], 3, stride=2, padding=1, bias=False)
            norm = nn.BatchNorm2d(w.shape[0], track_running_stats=False)  # batch statistics, always
            with torch.no_grad():
                conv.weight.copy_(w)
                norm.weight.copy_(params[f"bn{i}.weight"])
                norm.bias.copy_(params[f"bn{i}.bias"])
            layers += [conv, norm, nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(params["fc.weight"].shape[1], params["fc.weight"].shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(params["fc.weight"])
            self.fc.bias.copy_(params["fc.bias"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))

    def grads(self) -> dict[str, torch.Tensor]:
        """The ``.grad`` of every parameter under rkmeta-rl's names."""
        out: dict[str, torch.Tensor] = {}
        for i in range(1, BLOCKS + 1):
            conv, norm = self.features[3 * (i - 1)], self.features[3 * (i - 1) + 1]
            out[f"conv{i}.weight"], out[f"bn{i}.weight"], out[f"bn{i}.bias"] = conv.weight.grad, norm.weight.grad, \
                norm.bias.grad
        out["fc.weight"], out["fc.bias"] = self.fc.weight.grad, self.fc.bias.grad
        return out


def learn2learn_step(maml: Any, batch: dict[str, torch.Tensor]) -> None:
    """One meta-gradient by learn2learn's MAML loop, into the model's ``.grad`` (zeroed first)."""
    maml.zero_grad()
    n = batch["xs"].shape[0]
    for t in range(n):
        learner = maml.clone()
        learner.adapt(F.cross_entropy(learner(batch["xs"][t]), batch["ys"][t]))
        (F.cross_entropy(learner(batch["xq"][t]), batch["yq"][t]) / n).backward()


def batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAYS)
    return [{"xs": torch.rand(META_BATCH, WAYS * SHOTS, 1, 28, 28, generator=g),
             "ys": labels.repeat_interleave(SHOTS).repeat(META_BATCH, 1),
             "xq": torch.rand(META_BATCH, WAYS * QUERIES, 1, 28, 28, generator=g),
             "yq": labels.repeat_interleave(QUERIES).repeat(META_BATCH, 1)} for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--learn2learn-src", type=Path, default=None,
                   help="an unpacked learn2learn source tree (default: the installed package)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per side")
    p.add_argument("--iters", type=int, default=8, help="timed iterations per side")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    torch.set_num_threads(1)
    retain_freed_memory()  # as the training commands do
    info: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "machine": platform.machine(), "setting": {"ways": WAYS, "shots": SHOTS,
                                                                       "queries": QUERIES, "meta_batch": META_BATCH,
                                                                       "filters": FILTERS, "alpha": ALPHA}}
    try:
        maml_cls = load_learn2learn(args.learn2learn_src)
    except (ImportError, FileNotFoundError) as e:
        print(f"learn2learn is not available ({e}); pip install learn2learn, or pass --learn2learn-src DIR",
              flush=True)
        print(json.dumps({"learn2learn": None, "reason": str(e), **info}))
        return 0
    load_start = os.getloadavg()[0]
    init = init_conv4(1, WAYS, filters=FILTERS, pool="stride", image_size=28,
                      generator=torch.Generator().manual_seed(args.seed))
    losses = conv4_losses("stride")
    model = Conv4(init)
    maml = maml_cls(model, lr=ALPHA, first_order=False)
    params = {side: {k: v.clone().requires_grad_(True) for k, v in init.items()} for side in ("rkmeta", "loop")}
    optims: dict[str, torch.optim.Optimizer] = {side: torch.optim.Adam(params[side].values(), lr=1e-3)
                                                for side in params}
    optims["learn2learn"] = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = batches(args.warmup + args.iters, args.seed)

    # the same meta-gradient on both sides, before any step
    learn2learn_step(maml, data[0])
    ours = meta_gradient(init, *losses, data[0], "midpoint", ALPHA, 1)[0]
    theirs = model.grads()
    max_rel = max(float((ours[k] - theirs[k]).abs().max() / ours[k].abs().max().clamp_min(1e-12)) for k in ours)

    def ours_step(side: str, batch: dict[str, torch.Tensor]) -> None:
        grads = meta_gradient(params[side], *losses, batch, "midpoint", ALPHA, 1,
                              path="auto" if side == "rkmeta" else "loop")[0]
        for k, v in params[side].items():
            v.grad = grads[k]
        optims[side].step()

    def theirs_step(batch: dict[str, torch.Tensor]) -> None:
        learn2learn_step(maml, batch)
        optims["learn2learn"].step()

    steps: dict[str, Callable[[dict[str, torch.Tensor]], None]] = {
        "learn2learn": theirs_step, "rkmeta": lambda b: ours_step("rkmeta", b), "loop": lambda b: ours_step("loop", b)}
    times: dict[str, list[float]] = {side: [] for side in steps}
    order = list(steps)
    for it, batch in enumerate(data):
        for side in (order if it % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            steps[side](batch)
            dt = time.perf_counter() - t
            if it >= args.warmup:
                times[side].append(dt)
            print(f"iter {it + 1}/{len(data)} {'(warm-up) ' if it < args.warmup else ''}{side}: {dt:.3f} s",
                  flush=True)
    med = {side: statistics.median(v) for side, v in times.items()}
    result: dict[str, Any] = {f"{side}_s_per_iter": round(med[side], 4) for side in med}
    result.update({
        "rkmeta_path": choose_path(init, *losses, data[0]),
        "rkmeta_speedup_vs_learn2learn": round(med["learn2learn"] / med["rkmeta"], 3),
        "rkmeta_speedup_vs_loop": round(med["loop"] / med["rkmeta"], 3),
        "learn2learn_vs_loop": round(med["loop"] / med["learn2learn"], 3),
        "max_rel_diff": max_rel,
        "learn2learn_version": getattr(sys.modules.get("learn2learn"), "__version__", None),
        "learn2learn_source": str(args.learn2learn_src) if args.learn2learn_src else "installed",
        "loadavg_start": round(load_start, 2), "loadavg_end": round(os.getloadavg()[0], 2), **info,
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
