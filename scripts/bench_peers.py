#!/usr/bin/env python
"""Benchmark: learn2learn's MAML against rkmeta-rl, the same maths on both sides, two workloads.

``--workload omniglot`` (default): the paper's Omniglot protocol. One meta-iteration = the second-order MAML
meta-gradient (one inner step, alpha 0.4) over 32 tasks of 5-way 1-shot with 1 query image per class, on the
strided conv4 (64 filters, batch norm on each batch's own statistics, docs/protocols.md), plus an Adam step, on
the same batches for every side (uniform random images of Omniglot's shape: the time does not depend on the
pixels). ``--workload sinusoid``: ``bench_meta_gradient.py``'s setting (1-40-40-1 ReLU MLP, 25 tasks, K = 10,
alpha 0.01, second order, Adam step, tasks sampled in every iteration).

* ``learn2learn``: its documented MAML loop (``l2l.algorithms.MAML(model, lr=alpha)``; per task ``clone()``,
  ``adapt(support loss)``, the query loss divided by the meta-batch, ``backward()``), on a ``torch.nn`` model
  holding the same initial parameters;
* ``rkmeta``: rkmeta-rl with its defaults (Omniglot: ``meta_gradient(path="auto")``, the analytic path;
  sinusoid: ``MetaTrainer.step``, which compiles itself after warm-up, as in ``bench_meta_gradient.py``);
* ``loop``: rkmeta-rl's plain per-task autograd loop (``path="loop"``), the reference of the other benchmarks.

Before timing, the meta-gradients of one batch are compared: learn2learn's and rkmeta-rl's must agree to float32
rounding (``max_rel_diff``), so that both sides compute the same thing. Then the sides alternate in timed blocks
(order reversed every round) in one process with one torch thread, and the median block rate is reported.

learn2learn is not a dependency of rkmeta-rl. ``pip install learn2learn`` where it installs; its 0.2.0 source
does not build on Python 3.11 (its compiled data modules), so ``--learn2learn-src DIR`` takes an unpacked source
tree instead (``pip download learn2learn --no-deps --no-binary :all:`` and unpack it) and loads only the
pure-Python MAML (``learn2learn/utils`` and ``learn2learn/algorithms/{base_learner,maml}.py``), without the
package's ``__init__`` files that import the rest.

    python scripts/bench_peers.py [--workload omniglot|sinusoid] [--learn2learn-src DIR] [--rounds 8]

Last line: JSON with ``{side}_s_per_iter`` (median seconds per meta-iteration), ``rkmeta_speedup_vs_learn2learn``,
``rkmeta_speedup_vs_loop``, ``learn2learn_vs_loop`` and ``max_rel_diff``; without learn2learn, ``{"learn2learn":
null, ...}`` with the reason and exit status 0.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from rkmeta_rl.common.allocator import retain_freed_memory
from rkmeta_rl.rk import autocompile, choose_path, meta_gradient
from rkmeta_rl.supervised.config import MetaTrainConfig
from rkmeta_rl.supervised.conv4 import BLOCKS, conv4_losses, init_conv4
from rkmeta_rl.supervised.episodes import TaskBatch, random_episodes
from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem
from rkmeta_rl.supervised.trainer import MetaTrainer

#: Omniglot: ways, shots, queries per class, meta-batch, filters, inner rate (the paper's protocol)
WAYS, SHOTS, QUERIES, META_BATCH, FILTERS, ALPHA = 5, 1, 1, 32, 64, 0.4
#: sinusoid: meta-batch and inner rate (``MetaTrainConfig``'s defaults, as ``bench_meta_gradient.py``)
SINE_TASKS, SINE_ALPHA = 25, 0.01


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


def _load(module: nn.Module, params: Mapping[str, torch.Tensor], names: Mapping[str, str]) -> None:
    """Copy ``params[ours]`` into ``module``'s parameter ``names[ours]``."""
    own = dict(module.named_parameters())
    with torch.no_grad():
        for ours, theirs in names.items():
            own[theirs].copy_(params[ours])


def _grads(module: nn.Module, names: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """The ``.grad`` of ``module``'s parameters under rkmeta-rl's names."""
    own = dict(module.named_parameters())
    return {ours: own[theirs].grad for ours, theirs in names.items()}


class Conv4(nn.Module):
    """The strided conv4 as ``torch.nn`` modules (what a learn2learn user writes), loaded with ``params``."""

    def __init__(self, params: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.names: dict[str, str] = {}
        for i in range(1, BLOCKS + 1):
            f, c = params[f"conv{i}.weight"].shape[:2]
            layers += [nn.Conv2d(c, f, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(f, track_running_stats=False), nn.ReLU()]  # batch statistics, always
            j = 3 * (i - 1)
            self.names.update({f"conv{i}.weight": f"features.{j}.weight", f"bn{i}.weight": f"features.{j + 1}.weight",
                               f"bn{i}.bias": f"features.{j + 1}.bias"})
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(params["fc.weight"].shape[1], params["fc.weight"].shape[0])
        self.names.update({"fc.weight": "fc.weight", "fc.bias": "fc.bias"})
        _load(self, params, self.names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class MLP(nn.Module):
    """rkmeta-rl's functional ReLU MLP (``w{i}``, ``b{i}``) as ``torch.nn`` modules, loaded with ``params``."""

    def __init__(self, params: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        n = len(params) // 2
        layers: list[nn.Module] = []
        self.names: dict[str, str] = {}
        for i in range(n):
            out, inp = params[f"w{i}"].shape
            layers.append(nn.Linear(inp, out))
            self.names.update({f"w{i}": f"net.{len(layers) - 1}.weight", f"b{i}": f"net.{len(layers) - 1}.bias"})
            if i < n - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        _load(self, params, self.names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def learn2learn_meta_gradient(maml: Any, batch: TaskBatch, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                              ) -> None:
    """One meta-gradient by learn2learn's MAML loop, into the model's ``.grad`` (zeroed first)."""
    maml.zero_grad()
    n = batch["xs"].shape[0]
    for t in range(n):
        learner = maml.clone()
        learner.adapt(loss(learner(batch["xs"][t]), batch["ys"][t]))
        (loss(learner(batch["xq"][t]), batch["yq"][t]) / n).backward()


def _max_rel_diff(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor]) -> float:
    return max(float((ours[k] - theirs[k]).abs().max() / ours[k].abs().max().clamp_min(1e-12)) for k in ours)


def omniglot(maml_cls: Any, seed: int) -> tuple[dict[str, Callable[[], None]], float, dict[str, Any]]:
    """The three sides' meta-iterations, the meta-gradients' difference on the first batch, and details."""
    init = init_conv4(1, WAYS, filters=FILTERS, pool="stride", image_size=28,
                      generator=torch.Generator().manual_seed(seed))
    losses = conv4_losses("stride")
    model = Conv4(init)
    maml = maml_cls(model, lr=ALPHA, first_order=False)
    g = torch.Generator().manual_seed(seed)
    data = [random_episodes(META_BATCH, WAYS, SHOTS, QUERIES, g) for _ in range(4)]
    learn2learn_meta_gradient(maml, data[0], F.cross_entropy)
    diff = _max_rel_diff(meta_gradient(init, *losses, data[0], "midpoint", ALPHA, 1)[0], _grads(model, model.names))

    params = {side: {k: v.clone().requires_grad_(True) for k, v in init.items()} for side in ("rkmeta", "loop")}
    optims: dict[str, torch.optim.Optimizer] = {side: torch.optim.Adam(params[side].values(), lr=1e-3)
                                                for side in params}
    optims["learn2learn"] = torch.optim.Adam(model.parameters(), lr=1e-3)
    feeds: dict[str, Iterator[TaskBatch]] = {side: itertools.cycle(data) for side in ("learn2learn", "rkmeta", "loop")}

    def ours(side: str) -> None:
        grads = meta_gradient(params[side], *losses, next(feeds[side]), "midpoint", ALPHA, 1,
                              path="auto" if side == "rkmeta" else "loop")[0]
        for k, v in params[side].items():
            v.grad = grads[k]
        optims[side].step()

    def theirs() -> None:
        learn2learn_meta_gradient(maml, next(feeds["learn2learn"]), F.cross_entropy)
        optims["learn2learn"].step()

    steps = {"learn2learn": theirs, "rkmeta": lambda: ours("rkmeta"), "loop": lambda: ours("loop")}
    return steps, diff, {"rkmeta_path": choose_path(init, *losses, data[0]),
                         "setting": {"ways": WAYS, "shots": SHOTS, "queries": QUERIES, "meta_batch": META_BATCH,
                                     "filters": FILTERS, "alpha": ALPHA}}


def sinusoid(maml_cls: Any, seed: int, warmup_max_s: float) -> tuple[dict[str, Callable[[], None]], float,
                                                                      dict[str, Any]]:
    """As :func:`omniglot` for the sinusoid; warms the default trainer up until it has compiled itself."""
    def trainer(**settings: Any) -> MetaTrainer:
        cfg = MetaTrainConfig(method="midpoint", meta_batch_size=SINE_TASKS, inner_lr=SINE_ALPHA, device="cpu",
                              iterations=10**9, threads=1, seed=seed, **settings)
        return MetaTrainer(SinusoidProblem(), cfg, logdir=None)

    default, loop = trainer(), trainer(path="loop")
    problem = SinusoidProblem()
    init = {k: v.detach().clone() for k, v in default.params.items()}
    model = MLP(init)
    maml = maml_cls(model, lr=SINE_ALPHA, first_order=False)
    gen = torch.Generator().manual_seed(seed + 1)
    check = problem.sample_tasks(SINE_TASKS, gen, 2, torch.device("cpu"))
    learn2learn_meta_gradient(maml, check, F.mse_loss)
    ours = meta_gradient(init, problem.support_loss, problem.query_loss, check, "midpoint", SINE_ALPHA, 1,
                         compile=False)[0]
    diff = _max_rel_diff(ours, _grads(model, model.names))
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)

    def theirs() -> None:
        learn2learn_meta_gradient(maml, problem.sample_tasks(SINE_TASKS, gen, 2, torch.device("cpu")), F.mse_loss)
        optim.step()

    t0, before, n = time.perf_counter(), autocompile.compiled_programs(), 0
    while autocompile.compiled_programs() == before and time.perf_counter() - t0 < warmup_max_s:
        default.step()
        n += 1
    compiled = autocompile.compiled_programs() > before
    print(f"rkmeta default path: {'compiled by itself' if compiled else 'NOT compiled'} after {n} iterations, "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    steps = {"learn2learn": theirs, "rkmeta": default.step, "loop": loop.step}
    return steps, diff, {"rkmeta_compiled": compiled, "setting": {"meta_batch": SINE_TASKS, "K": 10,
                                                                   "alpha": SINE_ALPHA, "hidden": [40, 40]}}


def timed_rounds(steps: Mapping[str, Callable[[], None]], blocks: Mapping[str, int], rounds: int,
                 warmup: int) -> dict[str, float]:
    """Median seconds per call of every step: ``rounds`` rounds of one block each (``blocks[side]`` calls),
    the sides' order reversed every round, after ``warmup`` untimed blocks."""
    times: dict[str, list[float]] = {side: [] for side in steps}
    order = list(steps)
    for r in range(warmup + rounds):
        for side in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            for _ in range(blocks[side]):
                steps[side]()
            dt = (time.perf_counter() - t) / blocks[side]
            if r >= warmup:
                times[side].append(dt)
            print(f"round {r + 1}/{warmup + rounds} {'(warm-up) ' if r < warmup else ''}{side}: {dt:.4f} s "
                  "per meta-iteration", flush=True)
    return {side: statistics.median(v) for side, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=("omniglot", "sinusoid"), default="omniglot")
    p.add_argument("--learn2learn-src", type=Path, default=None,
                   help="an unpacked learn2learn source tree (default: the installed package)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds")
    p.add_argument("--rounds", type=int, default=8, help="timed rounds")
    p.add_argument("--block", type=int, default=100,
                   help="sinusoid: meta-iterations per timed block (the loop: a tenth); Omniglot: 1")
    p.add_argument("--warmup-max-s", type=float, default=300.0,
                   help="sinusoid: at most this many seconds waiting for the default path to compile itself")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.block < 1:
        p.error("--rounds and --block must be >= 1, --warmup >= 0")
    torch.set_num_threads(1)
    retain_freed_memory()  # as the training commands do
    info: dict[str, Any] = {"workload": args.workload, "torch": torch.__version__,
                            "threads": torch.get_num_threads(), "machine": platform.machine()}
    try:
        maml_cls = load_learn2learn(args.learn2learn_src)
    except (ImportError, FileNotFoundError) as e:
        print(f"learn2learn is not available ({e}); pip install learn2learn, or pass --learn2learn-src DIR",
              flush=True)
        print(json.dumps({"learn2learn": None, "reason": str(e), **info}))
        return 0
    load_start = os.getloadavg()[0]
    if args.workload == "omniglot":
        steps, diff, details = omniglot(maml_cls, args.seed)
        blocks = {side: 1 for side in steps}
    else:
        steps, diff, details = sinusoid(maml_cls, args.seed, args.warmup_max_s)
        blocks = {"learn2learn": args.block, "rkmeta": args.block, "loop": max(1, args.block // 10)}
    med = timed_rounds(steps, blocks, args.rounds, args.warmup)
    result: dict[str, Any] = {f"{side}_s_per_iter": round(med[side], 5) for side in med}
    result.update({
        "rkmeta_speedup_vs_learn2learn": round(med["learn2learn"] / med["rkmeta"], 3),
        "rkmeta_speedup_vs_loop": round(med["loop"] / med["rkmeta"], 3),
        "learn2learn_vs_loop": round(med["loop"] / med["learn2learn"], 3),
        "max_rel_diff": diff,
        "learn2learn_version": getattr(sys.modules.get("learn2learn"), "__version__", None),
        "learn2learn_source": str(args.learn2learn_src) if args.learn2learn_src else "installed",
        **details, "loadavg_start": round(load_start, 2), "loadavg_end": round(os.getloadavg()[0], 2), **info,
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
