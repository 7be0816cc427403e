#!/usr/bin/env python
"""Evaluate trained 2D-navigation meta-policies as the paper's Figure 5 does.

    python scripts/eval_nav.py runs/nav-euler-seed-s0 runs/nav-midpoint-seed-s0 runs/nav-ralston-seed-s0 ...

Loads each run's final checkpoint and measures, on the same fresh tasks (40 by default), the mean return
after 0, 1, ..., 9 inner gradient steps, each step sampling new episodes with the current adapted policy and
adapting with the run's own inner rate. References: a randomly initialised policy of the same architecture
adapted the same way (MAML's inner rate), and the oracle told the goal (straight to it at full speed, the
exact optimum). Writes ``eval_nav.csv`` and ``eval_nav.png`` into ``--out``, prints a table, and prints a JSON
object as its last line.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np
import torch

from rkmeta_rl.checkpoint import FINAL, latest_checkpoint
from rkmeta_rl.rl.algorithm import MetaTRPO
from rkmeta_rl.rl.evaluation import adaptation_curve, oracle_returns
from rkmeta_rl.rl.policy import GaussianMLPPolicy
from rkmeta_rl.utils import set_threads

ENV_ID = "rkmeta/Navigation2D-v0"


def load_run(run_dir: str) -> MetaTRPO:
    path = os.path.join(run_dir, FINAL)
    if not os.path.isfile(path):
        path = latest_checkpoint(run_dir) or ""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint in {run_dir} (expected {FINAL})")
    return MetaTRPO.load(path, device="cpu")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories written by train_nav.py")
    p.add_argument("--tasks", type=int, default=40)
    p.add_argument("--steps", type=int, default=9, help="inner steps (returns after 0..steps are reported)")
    p.add_argument("--traj", type=int, default=20, help="episodes per task per step")
    p.add_argument("--seed", type=int, default=2024, help="seeds the evaluation tasks and action noise")
    p.add_argument("--out", default=None, help="output folder (default: the first run's parent folder)")
    p.add_argument("--labels", nargs="*", default=None, help="legend labels (default: method names)")
    args = p.parse_args(argv)
    set_threads(1)
    try:
        models = [load_run(r) for r in args.runs]
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    labels = args.labels or [m.tableau.name for m in models]
    if len(labels) != len(models):
        sys.exit("error: give one --labels entry per run")
    out_dir = args.out or os.path.dirname(os.path.abspath(args.runs[0]))
    os.makedirs(out_dir, exist_ok=True)
    tasks = models[0].sampler.sample_tasks(args.tasks, np.random.default_rng(args.seed))
    curves: dict[str, np.ndarray] = {}
    for label, model in zip(labels, models):
        per_task = adaptation_curve(model.sampler, model.meta_step, model.policy.params(), tasks, args.steps,
                                    args.traj, torch.Generator().manual_seed(args.seed))
        curves[label] = per_task.mean(0)
    ref = models[0]
    random_policy = GaussianMLPPolicy(**ref.policy.config(), generator=torch.Generator().manual_seed(args.seed + 1))
    per_task = adaptation_curve(ref.sampler, ref.meta_step, random_policy.params(), tasks, args.steps, args.traj,
                                torch.Generator().manual_seed(args.seed), alpha=ref.inner_lr)
    curves["random init"] = per_task.mean(0)
    oracle = float(oracle_returns(ENV_ID, tasks).mean())

    steps = list(range(args.steps + 1))
    with open(os.path.join(out_dir, "eval_nav.csv"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["policy", *[f"return_after_{s}_steps" for s in steps]])
        for label, c in curves.items():
            w.writerow([label, *[f"{v:.4f}" for v in c]])
        w.writerow(["oracle", *[f"{oracle:.4f}"] * len(steps)])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, c in curves.items():
        style = dict(color="0.5", ls=":", marker="x") if label == "random init" else dict(marker="o", ms=4)
        ax.plot(steps, c, label=label, **style)
    ax.axhline(oracle, color="k", ls="--", lw=1, label="oracle")
    ax.set_xlabel("number of gradient steps")
    ax.set_ylabel("average return")
    ax.set_title(f"2D navigation: adaptation on {args.tasks} fresh tasks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "eval_nav.png"), dpi=120)
    plt.close(fig)

    header = "| policy | " + " | ".join(str(s) for s in steps) + " |"
    print(header)
    print("|---" * (len(steps) + 1) + "|")
    for label, c in curves.items():
        print(f"| {label} | " + " | ".join(f"{v:.1f}" for v in c) + " |")
    print("| oracle | " + " | ".join(f"{oracle:.1f}" for _ in steps) + " |")
    result = {"tasks": args.tasks, "steps": args.steps, "oracle": oracle,
              "curves": {k: [round(float(v), 3) for v in c] for k, c in curves.items()},
              "csv": os.path.join(out_dir, "eval_nav.csv"), "png": os.path.join(out_dir, "eval_nav.png")}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
