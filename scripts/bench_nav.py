#!/usr/bin/env python
"""Benchmark: seconds per 2D-navigation meta-iteration, one torch thread.

One meta-iteration = sample the tasks, D0 (20 trajectories x horizon 100 per task), the inner REINFORCE step,
D1 with the adapted policies, and the TRPO meta-update (gradient through the inner step, conjugate gradient
on the Fisher-vector product, line search): ``MetaTRPO.train_iteration``. Two variants are timed,
interleaved iteration by iteration in one process: ``fvp_subsample=0.2`` (the ``train_nav.py`` default) and
``1.0`` (the Fisher-vector product on every step, as the reference implementation does).

``--config reference`` (default): the widely used PyTorch MAML-RL code's setting, 20 tasks, 2x64 tanh, inner rate
0.1, midpoint. ``--config seed``: the README's main command (``train_nav.py --method ralston``: 40 tasks, 2x100
ReLU, inner rate 0.16; give ``--method ralston``), so its per-iteration time can be followed in
hardware-normalised units whatever the machine's speed at the moment.

    python scripts/bench_nav.py [--iters 8] [--method midpoint] [--config reference]

Last line: JSON with ``seconds_per_iteration`` (the default variant), ``seconds_per_iteration_exact_fvp``,
``env_steps_per_second``, the sampling / update split, the time of one forward pass of the dominant hidden x
hidden layer over D0 and D1 at the measured matmul speed (``seconds_per_64x64_pass_over_d0_d1`` for the reference
setting, ``seconds_per_100x100_pass_over_d0_d1`` for the seed setting), and every time in units of that pass
(``passes_equivalent``: seconds per iteration / seconds per pass; a load on the core slows both). With
``--reference-seconds S`` (the reference implementation's seconds per meta-iteration on the reference setting,
which you timed on the same machine: this script does not run it), also ``speedup_vs_reference``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from rkmeta_rl.common.allocator import retain_freed_memory
from rkmeta_rl.presets import NAV
from rkmeta_rl.rl.algorithm import REFERENCE_NAV_KWARGS, MetaTRPO


def make(method: str, fvp: float, seed: int, config: str = "reference") -> MetaTRPO:
    """The model of ``--config``: the reference keywords, or the training script's preset itself."""
    preset, extra = (None, REFERENCE_NAV_KWARGS) if config == "reference" else (NAV[config], {})
    return MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", config=preset, method=method, fvp_subsample=fvp,
                    seed=seed, device="cpu", **extra)


def matmul_gflops(n: int = 40_000, k: int = 64, reps: int = 20) -> float:
    """Measured float32 GFLOP/s of the policy's dominant product ``[n, k] @ [k, k]`` on one thread."""
    a, b = torch.randn(n, k), torch.randn(k, k)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n * k * k * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--method", default="midpoint")
    p.add_argument("--config", choices=("reference", "seed"), default="reference",
                   help="the reference setting (default) or the README main command's (seed)")
    p.add_argument("--reference-seconds", type=float, default=None,
                   help="the reference implementation's seconds per meta-iteration on the reference setting, timed "
                        "by you on this machine: adds speedup_vs_reference")
    args = p.parse_args()
    if args.reference_seconds is not None and (args.config != "reference" or not args.reference_seconds > 0):
        p.error("--reference-seconds takes a positive number of seconds, with --config reference")
    torch.set_num_threads(1)
    retain_freed_memory()  # as the training commands do
    models = {"default": make(args.method, 0.2, 0, args.config), "exact_fvp": make(args.method, 1.0, 0, args.config)}
    pol = models["default"].policy
    width = max(pol.hidden_sizes)
    tasks, traj = models["default"].config.meta_batch_size, models["default"].config.fast_batch_size
    times: dict[str, list[dict[str, float]]] = {k: [] for k in models}
    rates: list[float] = []
    for i in range(args.warmup + args.iters):
        for name, model in models.items():
            t = time.perf_counter()
            st = model.train_iteration()
            wall = time.perf_counter() - t
            if i >= args.warmup:
                times[name].append({"wall": wall, "sample": st["time/sample_seconds"],
                                    "update": st["time/update_seconds"]})
        if i >= args.warmup:  # the calibration, interleaved with the iterations it normalises
            rates.append(matmul_gflops(k=width))
        print(f"iteration {i + 1}: " + ", ".join(f"{k} {v[-1]['wall']:.2f}s" for k, v in times.items() if v),
              flush=True)
    med = {k: {f: statistics.median(x[f] for x in v) for f in ("wall", "sample", "update")} for k, v in times.items()}
    m = models["default"]
    steps = m.num_timesteps / m.num_iterations
    gflops = statistics.median(rates)
    # one forward of the dominant hidden x hidden layer over D0 + D1: the update needs dozens of these
    floor_pass = 2 * 2 * tasks * traj * m.sampler.horizon * width * width / (gflops * 1e9)
    hidden = "x".join(str(h) for h in pol.hidden_sizes)
    out = {
        "setting": f"2D navigation {args.config}: {tasks} tasks x {traj} traj x {m.sampler.horizon} steps, "
                   f"{hidden} {pol.activation}, inner lr {m.config.inner_lr}, 1 thread",
        "config": args.config,
        "method": args.method,
        "seconds_per_iteration": round(med["default"]["wall"], 3),
        "seconds_per_iteration_exact_fvp": round(med["exact_fvp"]["wall"], 3),
        "sample_seconds": round(med["default"]["sample"], 3),
        "update_seconds": round(med["default"]["update"], 3),
        "update_seconds_exact_fvp": round(med["exact_fvp"]["update"], 3),
        "env_steps_per_iteration": int(steps),
        "env_steps_per_second": round(steps / med["default"]["wall"], 1),
        "matmul_gflops_1_thread": round(gflops, 1),
        f"seconds_per_{width}x{width}_pass_over_d0_d1": round(floor_pass, 4),
        # hardware-normalised cost: the iteration in units of that pass (load on the core scales both)
        "passes_equivalent": round(med["default"]["wall"] / floor_pass, 1),
        "passes_equivalent_exact_fvp": round(med["exact_fvp"]["wall"] / floor_pass, 1),
        "update_passes_equivalent": round(med["default"]["update"] / floor_pass, 1),
        "sample_passes_equivalent": round(med["default"]["sample"] / floor_pass, 1),
        "torch": torch.__version__, "machine": platform.machine(),
    }
    if args.reference_seconds is not None:  # given by the user, not measured here
        out["reference_seconds_per_iteration_given"] = args.reference_seconds
        out["speedup_vs_reference"] = round(args.reference_seconds / med["default"]["wall"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
