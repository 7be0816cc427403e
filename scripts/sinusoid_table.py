#!/usr/bin/env python
"""Reproduce the paper's Table 2 (sinusoid regression): every method over several seeds, beside the paper.

    python scripts/sinusoid_table.py                       # 5 methods x 3 seeds x 70,000 iterations
    python scripts/sinusoid_table.py --iterations 20000 --seeds 0 1 --jobs 2

Each run is ``scripts/train_sinusoid.py`` in its own process (one torch thread each, ``--jobs`` at once) with
its own run directory under ``--out``; finished runs (``metrics.json`` present) are reused and interrupted
ones resumed, so the script can be stopped and restarted. Writes ``table.md``, ``table.json`` and
``table.png`` (bar chart) into ``--out`` and prints the JSON summary as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: The paper's Table 2 (Im, Jiang and Verma, 2019): query MSE after adaptation.
PAPER = {"euler": 2.72, "midpoint": 0.13, "heun": 0.19, "ralston": 0.12, "itb": 0.18}
HERE = os.path.dirname(os.path.abspath(__file__))


def run_one(method: str, seed: int, args: argparse.Namespace) -> dict:
    logdir = os.path.join(args.out, f"{method}-s{seed}")
    metrics_path = os.path.join(logdir, "metrics.json")
    if os.path.isfile(metrics_path):
        with open(metrics_path) as fh:
            m = json.load(fh)
        if m.get("iterations") == args.iterations:
            return m
    cmd = [sys.executable, os.path.join(HERE, "train_sinusoid.py"), "--method", method, "--seed", str(seed),
           "--iterations", str(args.iterations), "--logdir", logdir, "--no-progress", "--eval-interval",
           str(args.eval_interval)]
    if os.path.isfile(os.path.join(logdir, "checkpoint_latest.pt")):
        cmd.append("--resume")
    os.makedirs(os.path.dirname(logdir) or ".", exist_ok=True)
    # the log sits beside the run folder: a fresh run refuses a folder that already holds files
    with open(f"{logdir}.stdout.log", "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"run {method} seed {seed} failed (exit {proc.returncode}); see {logdir}.stdout.log")
    with open(metrics_path) as fh:
        return json.load(fh)


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    out = {}
    for method, ms in runs.items():
        row: dict[str, float] = {"seeds": len(ms), "paper": PAPER.get(method, float("nan"))}
        for key in ("mse_1_step", "mse_10_steps"):
            allv = np.array([m[key] for m in ms], dtype=float)
            # a run whose 10-step adaptation diverged on some task has a non-finite mean: count, don't average
            vals = allv[np.isfinite(allv)]
            row[key + "_diverged_seeds"] = int((~np.isfinite(allv)).sum())
            row[key] = float(vals.mean()) if vals.size else float("nan")
            row[key + "_ci95_seeds"] = float(1.96 * vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0
        med = [m.get("mse_10_steps_median") for m in ms if m.get("mse_10_steps_median") is not None]
        row["mse_10_steps_median"] = float(np.mean(med)) if med else float("nan")
        row["seconds_per_run"] = float(np.mean([m["seconds"] for m in ms]))
        out[method] = row
    return out


def markdown(summary: dict[str, dict[str, float]], iterations: int) -> str:
    def cell(r: dict, key: str) -> str:
        n_div, n = r[key + "_diverged_seeds"], int(r["seeds"])
        if n_div == n:
            return f"diverges ({n}/{n} seeds)"
        txt = f"{r[key]:.3f} ± {r[key + '_ci95_seeds']:.3f}"
        return txt + (f" ({n_div}/{n} seeds diverge)" if n_div else "")

    lines = ["| method | paper (Table 2) | ours, 1 step | ours, 10 steps | 10 steps, median task | seeds | s/run |",
             "|---|---|---|---|---|---|---|"]
    for method, r in summary.items():
        lines.append(f"| {method} | {r['paper']:.2f} | {cell(r, 'mse_1_step')} | {cell(r, 'mse_10_steps')} | "
                     f"{r['mse_10_steps_median']:.3g} | {int(r['seeds'])} | {r['seconds_per_run']:.0f} |")
    lines.append("")
    lines.append(f"Query MSE on 600 fresh tasks per run after 1 and 10 test-time steps with each method's own "
                 f"inner rate (alpha = 2 q21 x 0.01), {iterations} meta-iterations; ± is the 95% CI across seeds. "
                 "A run 'diverges' when some task's loss blows up over 10 steps at that rate (mean not finite).")
    return "\n".join(lines)


def bar_chart(summary: dict[str, dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    w = 0.27
    ax.bar(x - w, [summary[m]["paper"] for m in methods], w, label="paper", color="0.6")
    ax.bar(x, [summary[m]["mse_1_step"] for m in methods], w, yerr=[summary[m]["mse_1_step_ci95_seeds"]
           for m in methods], label="ours, 1 step", color="tab:blue", capsize=3)
    ax.bar(x + w, [summary[m]["mse_10_steps"] if np.isfinite(summary[m]["mse_10_steps"]) else 0.0 for m in methods],
           w, yerr=[summary[m]["mse_10_steps_ci95_seeds"] for m in methods], label="ours, 10 steps (0: diverges)",
           color="tab:orange", capsize=3)
    ax.set_xticks(x, methods)
    ax.set_yscale("log")
    ax.set_ylabel("query MSE (log scale)")
    ax.set_title("Sinusoid regression: MAML-RK methods")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(PAPER))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=70_000)
    p.add_argument("--eval-interval", type=int, default=10_000)
    p.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--out", default=os.path.join("results", "sinusoid_table"))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda ms: (ms[0], run_one(ms[0], ms[1], args)), jobs))
    runs: dict[str, list[dict]] = {m: [] for m in args.methods}
    for m, r in results:
        runs[m].append(r)
    summary = summarise(runs)
    md = markdown(summary, args.iterations)
    with open(os.path.join(args.out, "table.md"), "w") as fh:
        fh.write(md + "\n")
    bar_chart(summary, os.path.join(args.out, "table.png"))
    out = {"iterations": args.iterations, "seeds": args.seeds, "wall_seconds": round(time.time() - t0, 1),
           "methods": summary}
    with open(os.path.join(args.out, "table.json"), "w") as fh:
        json.dump(out, fh, indent=2)
    print(md)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
