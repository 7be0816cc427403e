#!/usr/bin/env python
"""GPU benchmark, one shot: every trainer timed on CUDA, exactness on the device, compiled and CUDA-graph paths.

    python scripts/gpu_check.py                                   # everything, at most --max-seconds (540)
    python scripts/gpu_check.py --omniglot-root DIR               # plus a short real Omniglot run
    python scripts/gpu_check.py --sections exactness sinusoid --max-seconds 120
    python scripts/gpu_check.py --cpu-harness                     # run the harness itself on the CPU (tiny)

Runs from a fresh clone with torch, gymnasium and mujoco installed; no network. Sections, in this order (the
budget stops cleanly between timed iterations and skips what is left; the JSON line is printed anyway):

* ``exactness``: a float64 meta-gradient on CUDA against the same on the CPU (a 1-8-8-1 tanh MLP, midpoint with
  two inner steps and ralston; a small conv4, 2 tasks), on every execution path (loop and vmap; for the conv4
  also batched and analytic): ``max_rel_diff`` and ``ok`` (``allclose``, rtol 1e-9).
* ``sinusoid``: ``MetaTrainer.step`` (meta-batch 25, second order, Adam) on CUDA: the library's default path
  (``compile="auto"``; on CUDA it stays eager and the JSON says why), eager vmap, ``torch.compile`` (inductor),
  ``torch.compile(mode="reduce-overhead")`` (CUDA graphs) and the plain loop; the CPU default path beside it.
* ``fewshot``: the paper's Omniglot 5-way 1-shot protocol (conv4 with 64 filters, strided, meta-batch 32, one
  query image per class, inner step 0.4, second order) on random 28x28 images (the time does not depend on the
  pixels): the default path (``path="auto"``: the analytic one), loop, vmap and batched on CUDA; the default
  path on the CPU beside it. Whether the analytic path is also the fastest on a GPU is what this measures.
* ``nav``: MetaTRPO on 2D navigation, the README main command's setting (``--config seed``) and the reference
  setting; the CPU beside them.
* ``locomotion``: MetaTRPO on HalfCheetahVel (the ``maml`` preset), a couple of iterations (skipped without
  MuJoCo).
* ``omniglot``: only with ``--omniglot-root`` or ``$RKMETA_OMNIGLOT``: ``--omniglot-iters`` meta-iterations of
  the paper protocol on the real data, then test accuracy after 3 inner steps on 100 tasks.
* ``fewshot_compiled``: the few-shot vmap program through ``torch.compile`` and with CUDA graphs (last: its
  compile time is not known in advance; skipped when less than 150 s are left).

Every figure is seconds per meta-iteration: the median of the timed iterations (``torch.cuda.synchronize``
around each), after ``--warmup`` untimed ones (``first_s``: their seconds, compilation included). Progress
lines go to stdout as sections finish; the last line is one JSON object with ``cuda``, ``gpu``
(``torch.cuda.get_device_name``), ``torch``, ``cuda_version``, one entry per section (errors as strings) and
``stopped_by_budget``.

Exit status: 0 when every section ran or was skipped, 1 when one failed (its error is in the JSON). Without
CUDA: one line saying so, the JSON ``{"cuda": false, "cuda_available": false, "message": ..., ...}``, exit status
0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable

import torch

SECTIONS = ("exactness", "sinusoid", "fewshot", "nav", "locomotion", "omniglot", "fewshot_compiled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--max-seconds", type=float, default=540.0,
                   help="stop cleanly after this many seconds (between iterations) and print the JSON")
    p.add_argument("--iters", type=int, default=5, help="timed meta-iterations per figure (RL: 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed meta-iterations first (compiles here)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU figures beside the CUDA ones")
    p.add_argument("--omniglot-root", default=os.environ.get("RKMETA_OMNIGLOT") or None,
                   help="real Omniglot (a folder holding images_background/ and images_evaluation/; default "
                        "$RKMETA_OMNIGLOT); without it the omniglot section is skipped")
    p.add_argument("--omniglot-iters", type=int, default=300, help="meta-iterations of the real Omniglot run")
    p.add_argument("--cpu-harness", action="store_true",
                   help="check this script on a machine without CUDA: every section on the CPU with one "
                        "iteration (figures meaningless)")
    args = p.parse_args(argv)
    for name in ("max_seconds", "iters", "omniglot_iters"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


class Budget:
    """Seconds left of ``--max-seconds``."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds
        self.hit = False

    def left(self) -> float:
        return self.end - time.perf_counter()

    def over(self) -> bool:
        if self.left() <= 0:
            self.hit = True
        return self.hit


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(step: Callable[[], Any], device: str, warmup: int, iters: int, budget: Budget) -> dict[str, Any]:
    """``{"s_per_iter": median seconds of the timed iterations, "iters", "first_s": seconds of the warm-up}``;
    stops early (keeping at least one timed iteration) when the budget is spent."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    first = time.perf_counter() - t0
    times: list[float] = []
    for _ in range(iters):
        if times and budget.over():
            break
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return {"s_per_iter": round(statistics.median(times), 5), "iters": len(times), "first_s": round(first, 2)}


# ---------------------------------------------------------------------------------------------------- exactness
def _mlp_case(dev: str, n_tasks: int = 3) -> tuple[Any, Any, Any, Any]:
    g = torch.Generator().manual_seed(0)
    sizes = [(1, 8), (8, 8), (8, 1)]
    params = {}
    for i, (fi, fo) in enumerate(sizes):
        params[f"w{i}"] = torch.randn(fo, fi, generator=g, dtype=torch.float64) * 0.7
        params[f"b{i}"] = torch.randn(fo, generator=g, dtype=torch.float64) * 0.1
    data = {k: torch.randn(n_tasks, 5, 1, generator=g, dtype=torch.float64) for k in ("xs", "ys", "xq", "yq")}

    def net(p: Any, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(len(sizes)):
            h = h @ p[f"w{i}"].T + p[f"b{i}"]
            h = torch.tanh(h) if i < len(sizes) - 1 else h
        return h

    def support(p: Any, d: Any) -> torch.Tensor:
        return ((net(p, d["xs"]) - d["ys"]) ** 2).mean()

    def query(p: Any, d: Any) -> torch.Tensor:
        return ((net(p, d["xq"]) - d["yq"]) ** 2).mean()

    move = {k: v.to(dev) for k, v in params.items()}, {k: v.to(dev) for k, v in data.items()}
    return move[0], move[1], support, query


def _conv_case(dev: str) -> tuple[Any, Any, Any, Any]:
    from rkmeta_rl.supervised.conv4 import conv4_losses, init_conv4

    g = torch.Generator().manual_seed(1)
    params = {k: v.double() for k, v in init_conv4(1, 5, filters=8, pool="stride", image_size=28, generator=g,
                                                   device=torch.device("cpu")).items()}
    data = {"xs": torch.rand(2, 5, 1, 28, 28, generator=g, dtype=torch.float64),
            "ys": torch.arange(5).repeat(2, 1),
            "xq": torch.rand(2, 5, 1, 28, 28, generator=g, dtype=torch.float64),
            "yq": torch.arange(5).repeat(2, 1)}
    support, query = conv4_losses("stride")
    return ({k: v.to(dev) for k, v in params.items()}, {k: v.to(dev) for k, v in data.items()}, support, query)


def section_exactness(dev: str, args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    from rkmeta_rl.rk import meta_gradient

    out: dict[str, Any] = {}
    cases = [("mlp_midpoint_2steps", _mlp_case, "midpoint", 0.1, 2), ("mlp_ralston", _mlp_case, "ralston", 0.1, 1),
             ("conv4", _conv_case, "midpoint", 0.4, 1)]
    for name, make, method, lr, steps in cases:
        params, data, support, query = make("cpu")
        ref, _ = meta_gradient(params, support, query, data, method, lr, steps, path="loop", compile=False)
        params, data, support, query = make(dev)
        for path in ("loop", "vmap") + (("batched", "analytic") if name == "conv4" else ()):
            g, _ = meta_gradient(params, support, query, data, method, lr, steps, path=path, compile=False)
            rel = max(float((g[k].cpu() - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-300)) for k in ref)
            ok = all(torch.allclose(g[k].cpu(), ref[k], rtol=1e-9, atol=1e-12) for k in ref)
            out[f"{name}_{path}"] = {"max_rel_diff": rel, "ok": ok}
    out["ok"] = all(v["ok"] for v in out.values() if isinstance(v, dict))
    return out


# ---------------------------------------------------------------------------------------------------- trainers
def _trainer(problem: Any, **settings: Any) -> Any:
    from rkmeta_rl.supervised.config import MetaTrainConfig
    from rkmeta_rl.supervised.trainer import MetaTrainer

    return MetaTrainer(problem, MetaTrainConfig(iterations=10**9, eval_interval=0, **settings), logdir=None)


def _variants(make: Callable[..., Any], dev: str, variants: dict[str, dict[str, Any]], args: argparse.Namespace,
              budget: Budget, cuda_graphs: bool = False) -> dict[str, Any]:
    """Time ``make(**settings).step`` for each variant (a variant's failure is recorded, the others go on)."""
    from rkmeta_rl.rk import autocompile

    out: dict[str, Any] = {}
    for name, settings in variants.items():
        if budget.over():
            out[name] = "skipped: budget spent"
            continue
        graphs = cuda_graphs and name.endswith("cudagraphs")
        saved = dict(autocompile.COMPILE_OPTIONS)
        try:
            if graphs:
                autocompile.COMPILE_OPTIONS["mode"] = "reduce-overhead"
            tr = make(**settings)

            def step(tr: Any = tr, graphs: bool = graphs) -> None:
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                tr.step()

            with _warnings_as_errors_for_fallback():
                out[name] = time_steps(step, settings.get("device", dev), args.warmup, args.iters, budget)
            tr.close()
        except Exception as err:  # noqa: BLE001 - report every variant
            traceback.print_exc()
            out[name] = {"error": f"{type(err).__name__}: {err}"}
        finally:
            autocompile.COMPILE_OPTIONS.clear()
            autocompile.COMPILE_OPTIONS.update(saved)
        print(f"  {name}: {out[name]}", flush=True)
    base = out.get("loop")
    if isinstance(base, dict) and "s_per_iter" in base:
        for row in out.values():
            if isinstance(row, dict) and "s_per_iter" in row:
                row["speedup_vs_loop"] = round(base["s_per_iter"] / row["s_per_iter"], 2)
    return out


class _warnings_as_errors_for_fallback:
    """A compiled variant that fell back to eager (a ``RuntimeWarning`` from the library) must not be reported as
    a compiled figure: the warning becomes an error."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.filterwarnings("error", message="torch.compile of the meta-gradient failed", category=RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def section_sinusoid(dev: str, args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    from rkmeta_rl.rk import autocompile
    from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem

    def make(**settings: Any) -> Any:
        return _trainer(SinusoidProblem(), method="midpoint", meta_batch_size=25, **settings)

    variants: dict[str, dict[str, Any]] = {
        "default": {"device": dev}, "eager": {"device": dev, "path": "vmap", "compile": False},
        "compiled": {"device": dev, "path": "vmap", "compile": True},
        "compiled_cudagraphs": {"device": dev, "path": "vmap", "compile": True},
        "loop": {"device": dev, "path": "loop"}}
    if not dev.startswith("cuda"):
        variants.pop("compiled_cudagraphs")
    if not args.no_cpu and dev != "cpu":
        variants["cpu_default"] = {"device": "cpu"}
        variants["cpu_compiled"] = {"device": "cpu", "path": "vmap", "compile": True}
    out = _variants(make, dev, variants, args, budget, cuda_graphs=True)
    probe = make(device=dev)
    # why compile="auto" stays eager here (None: it compiles by itself after a few seconds of eager calls)
    out["default_auto_compile_blocked_by"] = autocompile.auto_blocker(
        probe.params, probe.problem.sample_tasks(2, torch.Generator().manual_seed(0), 2, probe.device))
    probe.close()
    return out


def _random_split(classes: int, per_class: int, seed: int) -> Any:
    """A :class:`~rkmeta_rl.supervised.class_split.ClassSplit` of random 28x28 grey images."""
    from rkmeta_rl.supervised.class_split import ClassSplit

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (classes * per_class, 28, 28, 1), dtype=torch.uint8, generator=g)
    members = tuple(torch.arange(c * per_class, (c + 1) * per_class) for c in range(classes))
    return ClassSplit(images, members, tuple(f"random/{c}" for c in range(classes)))


def _paper_fewshot(dev: str, problem: Any | None = None, **settings: Any) -> Any:
    """The paper's Omniglot 5-way 1-shot protocol (``--config paper``), on ``problem`` (default: random images)."""
    from rkmeta_rl.presets import FEWSHOT
    from rkmeta_rl.supervised.fewshot_problem import FewShotProblem

    c = FEWSHOT["paper-omniglot-5w1s"]
    if problem is None:
        problem = FewShotProblem("omniglot", _random_split(64, 20, 0), _random_split(20, 20, 1), ways=c.ways,
                                 shots=c.shots, queries=c.queries, filters=c.filters, pool=c.pool)
    return _trainer(problem, method="midpoint", meta_batch_size=c.meta_batch_size, inner_lr=c.inner_lr,
                    inner_steps=c.inner_steps, test_inner_steps=c.test_inner_steps, meta_lr=c.meta_lr,
                    **{"device": dev, **settings})


def section_fewshot(dev: str, args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    variants: dict[str, dict[str, Any]] = {"default": {}, "loop": {"path": "loop"},
                                           "vmap": {"path": "vmap", "compile": False},
                                           "batched": {"path": "batched"}}
    if not args.no_cpu and dev != "cpu":
        variants["cpu_default"] = {"device": "cpu"}
    return _variants(lambda **s: _paper_fewshot(dev, **s), dev, variants, args, budget)


def section_fewshot_compiled(dev: str, args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    if budget.left() < 150 and not args.cpu_harness:
        return {"skipped": f"only {budget.left():.0f} s left (needs 150 s for compiling)"}
    variants: dict[str, dict[str, Any]] = {"vmap_compiled": {"path": "vmap", "compile": True},
                                           "vmap_compiled_cudagraphs": {"path": "vmap", "compile": True}}
    if not dev.startswith("cuda"):
        variants.pop("vmap_compiled_cudagraphs")
    return _variants(lambda **s: _paper_fewshot(dev, **s), dev, variants, args, budget, cuda_graphs=True)


def section_omniglot(dev: str, args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    if not args.omniglot_root:
        return {"skipped": "no --omniglot-root or $RKMETA_OMNIGLOT"}
    from rkmeta_rl.data import omniglot_root
    from rkmeta_rl.presets import FEWSHOT
    from rkmeta_rl.supervised.fewshot_problem import FewShotProblem
    from rkmeta_rl.supervised.omniglot import load_omniglot_splits

    if budget.left() < 60 and not args.cpu_harness:
        return {"skipped": f"only {budget.left():.0f} s left (loading and a short run need a minute or more)"}
    c = FEWSHOT["paper-omniglot-5w1s"]
    t0 = time.perf_counter()
    splits = load_omniglot_splits(omniglot_root(args.omniglot_root), num_val=c.val_characters, progress=False,
                                  split_seed=c.split_seed, workers=min(8, os.cpu_count() or 1))
    load_s = time.perf_counter() - t0
    problem = FewShotProblem("omniglot", splits.train, splits.test, splits.val, ways=c.ways, shots=c.shots,
                             queries=c.queries, test_queries=c.test_queries, filters=c.filters, pool=c.pool)
    tr = _paper_fewshot(dev, problem)
    try:
        iters = 2 if args.cpu_harness else args.omniglot_iters
        tr.step()  # the first one (CUDA start-up) is not timed
        _sync(dev)
        t0 = time.perf_counter()
        done = 1
        while done < iters and not (done > 1 and budget.left() < 30):
            tr.step()
            done += 1
        _sync(dev)
        train_s = time.perf_counter() - t0
        res = tr.evaluate(10 if args.cpu_harness else 100, seed=1, split="test", steps=3)
        acc = res["acc"]
        return {"load_s": round(load_s, 1), "iterations": done,
                "s_per_iter": round(train_s / max(1, done - 1), 5),
                "test_acc_after_1_step": round(float(acc[:, 1].mean()), 4),
                "test_acc_after_3_steps": round(float(acc[:, 3].mean()), 4), "test_tasks": int(acc.shape[0])}
    finally:
        tr.close()


def _metatrpo(dev: str, env: str, config: Any, **settings: Any) -> Any:
    from rkmeta_rl.rl.algorithm import MetaTRPO

    return MetaTRPO("MlpPolicy", env, config=config, device=dev, **settings)


def section_nav(dev: str, args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    from rkmeta_rl.presets import NAV

    out: dict[str, Any] = {}
    devices = [dev] + ([] if args.no_cpu or dev == "cpu" else ["cpu"])
    for setting in ("seed", "reference"):
        for d in devices:
            key = f"{setting}_{'cpu' if d == 'cpu' and dev != 'cpu' else 'device'}"
            if budget.over():
                out[key] = "skipped: budget spent"
                continue
            try:
                model = _metatrpo(d, "rkmeta/Navigation2D-v0", NAV[setting], method="ralston")
                out[key] = time_steps(model.train_iteration, d, 1 if args.warmup else 0,
                                      1 if args.cpu_harness else 3, budget)
                model.close()
            except Exception as err:  # noqa: BLE001
                traceback.print_exc()
                out[key] = {"error": f"{type(err).__name__}: {err}"}
            print(f"  {key}: {out[key]}", flush=True)
    return out


def section_locomotion(dev: str, args: argparse.Namespace, budget: Budget) -> dict[str, Any]:
    try:
        import mujoco  # noqa: F401
    except ImportError:
        return {"skipped": "mujoco is not installed"}
    from rkmeta_rl.presets import LOCOMOTION

    if budget.left() < 60 and not args.cpu_harness:
        return {"skipped": f"only {budget.left():.0f} s left (two iterations need about a minute)"}
    settings = {"meta_batch_size": 2, "fast_batch_size": 2, "horizon": 20} if args.cpu_harness else {}
    model = _metatrpo(dev, "rkmeta/HalfCheetahVel-v0", LOCOMOTION["maml"], method="ralston", **settings)
    try:
        # a couple of iterations: MuJoCo steps on the CPU dominate, the figure is the update's share on the device
        return {"setting": "maml preset" if not settings else "harness (tiny)",
                **time_steps(model.train_iteration, dev, 1 if args.warmup else 0, 1, budget)}
    finally:
        model.close()


RUNNERS: dict[str, Callable[[str, argparse.Namespace, Budget], dict[str, Any]]] = {
    "exactness": section_exactness, "sinusoid": section_sinusoid, "fewshot": section_fewshot,
    "nav": section_nav, "locomotion": section_locomotion, "omniglot": section_omniglot,
    "fewshot_compiled": section_fewshot_compiled}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the JSON last and returns the exit status."""
    args = parse_args(argv)
    base: dict[str, Any] = {"torch": torch.__version__, "cuda_version": torch.version.cuda,
                            "machine": platform.machine(), "cpu_cores": os.cpu_count()}
    if not torch.cuda.is_available() and not args.cpu_harness:
        message = "no CUDA device on this machine (torch.cuda.is_available() is False): nothing timed (exit 0)"
        print(f"gpu_check: {message}", flush=True)
        print(json.dumps({"cuda": False, "cuda_available": False, "message": message, **base}))
        return 0
    budget = Budget(args.max_seconds)
    if args.cpu_harness:
        dev = "cpu"
        args.iters, args.warmup, args.no_cpu = 1, min(args.warmup, 1), True
        res: dict[str, Any] = {"cuda": False, "cuda_available": False, "cpu_harness": True, **base}
    else:
        dev = "cuda"
        props = torch.cuda.get_device_properties(0)
        res = {"cuda": True, "cuda_available": True, "gpu": torch.cuda.get_device_name(0), **base,
               "cudnn": torch.backends.cudnn.version(), "capability": f"{props.major}.{props.minor}",
               "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
    print(f"gpu_check on {res.get('gpu', 'the CPU (harness check)')}, torch {torch.__version__}, "
          f"budget {args.max_seconds:.0f} s", flush=True)
    failed: list[str] = []
    t_all = time.perf_counter()
    for name in SECTIONS:
        if name not in args.sections:
            continue
        if budget.over():
            res[name] = "skipped: budget spent"
            continue
        print(f"[{time.perf_counter() - t_all:6.1f} s] {name} ...", flush=True)
        try:
            res[name] = RUNNERS[name](dev, args, budget)
        except Exception as err:  # noqa: BLE001 - one section's failure must not hide the others
            traceback.print_exc()
            res[name] = {"error": f"{type(err).__name__}: {err}"}
        if _has_error(res[name]) or (name == "exactness" and not res[name].get("ok", True)):
            failed.append(name)
        print(f"[{time.perf_counter() - t_all:6.1f} s] {name}: {json.dumps(res[name])}", flush=True)
    res["failed"] = failed
    res["stopped_by_budget"] = budget.hit
    res["seconds"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(res))
    return 1 if failed else 0


def _has_error(value: Any) -> bool:
    if isinstance(value, dict):
        return "error" in value or any(_has_error(v) for v in value.values())
    return False


if __name__ == "__main__":
    sys.exit(main())
