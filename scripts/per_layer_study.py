#!/usr/bin/env python
"""The per-layer RK study the MAML-RK paper proposes (Im, Jiang and Verma, 2019, https://arxiv.org/abs/1910.07368).

Over seeds, on Omniglot 5-way 1-shot (the paper's protocol: one query image per class in training and
evaluation, MAML's meta-batch 32, inner rate 0.4, one inner step, three test steps) and on 2D navigation (the
reference setting: 2x64 tanh policy, inner rate 0.1, 20 tasks x 20 trajectories), it trains

* uniform midpoint (MAML) and uniform ralston;
* the head on midpoint with the body on ralston, heun, itb or euler (the paper's proposal: moving down the
  network shifts weight from a2 to a1);
* ANIL (Raghu et al., 2019, https://arxiv.org/abs/1909.09157): midpoint, only the head adapted.

Every run is ``scripts/train_fewshot.py`` / ``scripts/train_nav.py`` in a subprocess with explicit flags, into
``OUT/<benchmark>/<variant>/s<seed>`` (its output in ``OUT/logs/``), ``--jobs`` of them at once; a run whose
``metrics.json`` exists is skipped and one with a checkpoint resumes, so an interrupted study continues where it
stopped; a failed run is reported and the others go on. Each finished run leaves a record (its portable command and
``metrics.json``, :mod:`rkmeta_rl.common.run_record`) under ``--results`` (``results/per_layer/`` in the checkout,
meant to be committed): a run with a record is finished even where its folder is gone, and the table is rebuilt
from the records. ``--report-only`` writes the table from finished runs.
The table (mean and a Student-t 95% interval over seeds) and the plot go to ``--docs`` (``per_layer_study.md``,
``per_layer_study.png``). ``--step-rule fixed`` (every group steps the same inner rate, which separates the body's
stage weights from its inner step size) keeps its own records and files (``results/per_layer_fixed/``,
``per_layer_study_fixed.*``). The score is Omniglot's test accuracy after the test steps on fresh episodes, and
navigation's post-adaptation return (mean of the last 10 iterations).

    python scripts/per_layer_study.py --out runs/per_layer --seeds 0 1 2 --omniglot-iterations 300 \\
        --nav-iterations 100 --jobs 2

The last line printed is a JSON object with the table's numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from rkmeta_rl.common import run_record
from rkmeta_rl.stats import mean_interval as _t_interval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the parameter patterns of each benchmark's head (conv4's linear layer; the 2-hidden-layer policy's output)
HEADS = {"omniglot": "fc.*", "nav": "w2|b2|log_std"}


@dataclass(frozen=True)
class Variant:
    """One configuration of the study: ``method`` with ``{head}`` for the benchmark's head pattern."""

    key: str
    label: str
    method: str
    adapt_head: bool = False

    def flags(self, benchmark: str) -> list[str]:
        head = HEADS[benchmark]
        out = ["--method", self.method.format(head=head)]
        if self.adapt_head:
            out += ["--adapt", head.replace("|", ",")]
        return out


VARIANTS = (
    Variant("midpoint", "uniform midpoint (MAML)", "midpoint"),
    Variant("ralston", "uniform ralston", "ralston"),
    Variant("head-midpoint_body-ralston", "head midpoint, body ralston", "{head}=midpoint,*=ralston"),
    Variant("head-midpoint_body-heun", "head midpoint, body heun", "{head}=midpoint,*=heun"),
    Variant("head-midpoint_body-itb", "head midpoint, body itb", "{head}=midpoint,*=itb"),
    Variant("head-midpoint_body-euler", "head midpoint, body euler", "{head}=midpoint,*=euler"),
    Variant("anil", "ANIL (midpoint, head adapted)", "midpoint", adapt_head=True),
)


def mean_interval(values: Sequence[float]) -> tuple[float, float | None]:
    """``(mean, half-width of the Student-t 95% interval)`` (:func:`rkmeta_rl.stats.mean_interval`); the
    half-width is None for fewer than 2 values."""
    mean, half, n = _t_interval(values)
    return mean, (None if n < 2 or math.isnan(half) else half)


def run_command(benchmark: str, variant: Variant, seed: int, logdir: str, args: argparse.Namespace) -> list[str]:
    """The training script's command line, every setting explicit."""
    if benchmark == "omniglot":
        return [sys.executable, os.path.join(ROOT, "scripts", "train_fewshot.py"), "--dataset", "omniglot",
                "--ways", "5", "--shots", "1", "--queries", "1", *variant.flags(benchmark),
                "--meta-batch-size", str(args.omniglot_meta_batch_size), "--inner-lr", "0.4", "--inner-steps", "1",
                "--test-inner-steps", "3", "--iterations", str(args.omniglot_iterations), "--seed", str(seed),
                "--data-root", args.omniglot_root, "--eval-tasks", str(args.omniglot_eval_tasks),
                "--eval-interval", "0", "--checkpoint-interval", str(max(1, min(100, args.omniglot_iterations))),
                "--device", "cpu", "--threads", str(args.threads), "--logdir", logdir, "--no-progress",
                *_rule_flags(args)]
    return [sys.executable, os.path.join(ROOT, "scripts", "train_nav.py"), "--config", "reference",
            *variant.flags(benchmark), *_rule_flags(args), "--iterations", str(args.nav_iterations),
            "--meta-batch-size", str(args.nav_meta_batch_size), "--fast-batch-size", str(args.nav_fast_batch_size),
            "--seed", str(seed), "--figure-interval", "0",
            "--checkpoint-interval", str(max(1, min(10, args.nav_iterations))),
            "--device", "cpu", "--threads", str(args.threads), "--logdir", logdir, "--no-progress"]


def _rule_flags(args: argparse.Namespace) -> list[str]:
    """``--step-rule fixed`` when the study runs under it; nothing for the scripts' default ``tableau`` (so the
    commands, and the records that name them, of the tableau-rule study are unchanged)."""
    return ["--step-rule", args.step_rule] if args.step_rule != "tableau" else []


def _rule_suffix(step_rule: str) -> str:
    """What a non-default step rule appends to the study's file and record-folder names (``""``, ``"_fixed"``)."""
    return "" if step_rule == "tableau" else f"_{step_rule}"


def study_name(args: argparse.Namespace) -> str:
    """The file stem of the table and the plot: ``per_layer_study`` (tableau rule) or ``per_layer_study_fixed``."""
    return "per_layer_study" + _rule_suffix(args.step_rule)


def score(benchmark: str, metrics: dict) -> float:
    """The study's score of one run: Omniglot test accuracy, navigation post-adaptation return."""
    return float(metrics["accuracy"] if benchmark == "omniglot" else metrics["post_return"])


def _where(benchmark: str, variant: Variant, seed: int, args: argparse.Namespace) -> tuple[str, str, list[str]]:
    """``(run folder, record file, portable command)`` of one run."""
    logdir = os.path.join(args.out, benchmark, variant.key, f"s{seed}")
    cmd = run_command(benchmark, variant, seed, logdir, args)
    portable = [os.path.basename(cmd[1]), *run_record.portable_command(cmd[2:], "RKMETA_OMNIGLOT")]
    return logdir, os.path.join(args.results, benchmark, variant.key, f"s{seed}.json"), portable


def finished_metrics(benchmark: str, variant: Variant, seed: int, args: argparse.Namespace) -> dict | None:
    """A finished run's ``metrics.json``: from its folder (recording it when it has no record yet), else from its
    record; None when the run has not finished."""
    return run_record.finished_metrics(*_where(benchmark, variant, seed, args))


def _run_one(benchmark: str, variant: Variant, seed: int, args: argparse.Namespace) -> str | None:
    """Train one run into its folder, its output in ``OUT/logs/``; ``None`` when it finished, else the error."""
    logdir = os.path.join(args.out, benchmark, variant.key, f"s{seed}")
    cmd = run_command(benchmark, variant, seed, logdir, args)
    same = run_record.folder_matches(logdir, cmd[1:])
    if same and os.path.isfile(os.path.join(logdir, "checkpoint_latest.pt")):
        cmd.append("--resume")  # an interrupted run continues where it stopped
    elif os.path.isdir(logdir) and os.listdir(logdir):
        # stopped before its first checkpoint, or made by another configuration: keep it beside, start afresh
        os.replace(logdir, f"{logdir}.{'unfinished' if same else 'other-config'}-{time.strftime('%Y%m%d-%H%M%S')}")
    log_path = os.path.join(args.out, "logs", f"{benchmark}-{variant.key}-s{seed}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),  # the checkout, installed or not
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    print(f"[run] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%dT%H:%M:%S')}: {' '.join(cmd)}\n")
        log.flush()
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    name = f"{benchmark}/{variant.key}/s{seed}"
    if code != 0:
        return f"{name}: exit code {code}; log: {log_path}"
    finished_metrics(benchmark, variant, seed, args)  # writes its record
    print(f"[done] {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return None


def run_all(args: argparse.Namespace) -> tuple[dict[str, dict[str, list[float]]], list[str]]:
    """Run every unfinished benchmark x variant x seed (``--jobs`` at once; none with ``--report-only``), then
    read the finished ones: ``({benchmark: {variant key: scores of finished seeds}}, errors)``. A failed run is
    reported and the others go on."""
    variants = [v for v in VARIANTS if not args.variants or v.key in args.variants]
    # seed-major: an interrupted study holds whole seeds (every variant), not a few variants with every seed
    plan = [(b, v, seed) for seed in args.seeds for b in args.benchmarks for v in variants]
    todo = [r for r in plan if finished_metrics(*r, args) is None]
    errors: list[str] = []
    if todo and not args.report_only:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each job is a subprocess
            errors = [e for e in pool.map(lambda r: _run_one(*r, args), todo) if e is not None]
    out: dict[str, dict[str, list[float]]] = {b: {} for b in args.benchmarks}
    for b, v, seed in plan:
        metrics = finished_metrics(b, v, seed, args)
        if metrics is not None:
            out[b].setdefault(v.key, []).append(score(b, metrics))
    return out, errors


def table(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    """A markdown table: one row per variant, mean ± Student-t 95% half-width per benchmark."""
    benches = list(results)
    names = {"omniglot": f"Omniglot 5w1s accuracy ({args.omniglot_iterations} it)",
             "nav": f"2D nav post-adaptation return ({args.nav_iterations} it)"}
    lines = ["| variant | " + " | ".join(names[b] for b in benches) + " |",
             "|---|" + "---|" * len(benches)]
    for v in VARIANTS:
        if not any(v.key in results[b] for b in benches):
            continue
        cells = []
        for b in benches:
            if v.key not in results[b]:
                cells.append("not run yet")
                continue
            m, hw = mean_interval(results[b][v.key])
            cells.append(f"{m:.4g}" + ("" if hw is None else f" ± {hw:.2g}") + f" (n={len(results[b][v.key])})")
        lines.append(f"| {v.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, list[float]]], path: str) -> None:
    """One panel per benchmark: the mean per variant with its 95% interval and the seeds' values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 3.8), squeeze=False)
    for ax, (bench, res) in zip(axes[0], results.items()):
        if not res:
            ax.set_axis_off()
            continue
        keys = [v for v in VARIANTS if v.key in res]
        for i, v in enumerate(keys):
            m, hw = mean_interval(res[v.key])
            ax.errorbar([i], [m], yerr=None if hw is None else [[hw], [hw]], fmt="o", capsize=4, color="C0")
            ax.plot([i] * len(res[v.key]), res[v.key], ".", color="0.6")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels([v.label for v in keys], rotation=35, ha="right", fontsize=7)
        ax.set_title("Omniglot 5-way 1-shot: test accuracy" if bench == "omniglot"
                     else "2D navigation: post-adaptation return", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder of the runs (one per benchmark x variant x seed)")
    p.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="where the table and the plot go")
    p.add_argument("--results", default=None,
                   help="where each finished run's record goes (small JSON files to commit; default "
                        "results/per_layer, results/per_layer_fixed under --step-rule fixed)")
    p.add_argument("--step-rule", choices=("tableau", "fixed"), default="tableau",
                   help="the inner step sizes (docs/method.md): tableau (default: a group on method m steps "
                        "2 q21 alpha, e.g. ralston 4/3 alpha, so the body's a1 comes with a larger step) or fixed "
                        "(every group steps alpha: the stage weights alone differ between the variants); records "
                        "and the table of the fixed rule go to their own files")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--benchmarks", nargs="+", choices=("omniglot", "nav"), default=["omniglot", "nav"])
    p.add_argument("--variants", nargs="+", choices=[v.key for v in VARIANTS], default=None,
                   help="a subset of the variants (default all)")
    p.add_argument("--omniglot-root", default=None,
                   help="Omniglot folder (default: the data root; `python -m rkmeta_rl.data omniglot` gets it)")
    p.add_argument("--omniglot-iterations", type=int, default=300)
    p.add_argument("--omniglot-meta-batch-size", type=int, default=32)
    p.add_argument("--omniglot-eval-tasks", type=int, default=600)
    p.add_argument("--nav-iterations", type=int, default=100)
    p.add_argument("--nav-meta-batch-size", type=int, default=20)
    p.add_argument("--nav-fast-batch-size", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (e.g. the machine's cores / --threads)")
    p.add_argument("--report-only", action="store_true", help="write the table and plot from finished runs")
    args = p.parse_args(argv)
    if args.results is None:
        args.results = os.path.join(ROOT, "results", "per_layer" + _rule_suffix(args.step_rule))
    for name in ("omniglot_iterations", "omniglot_meta_batch_size", "omniglot_eval_tasks", "nav_iterations",
                 "nav_meta_batch_size", "nav_fast_batch_size", "threads", "jobs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if "omniglot" in args.benchmarks:
        if args.omniglot_root is None:
            from rkmeta_rl.data import omniglot_root

            try:
                args.omniglot_root = str(omniglot_root())
            except FileNotFoundError as err:
                p.error(str(err))
        if not os.path.isdir(args.omniglot_root):
            p.error(f"--omniglot-root {args.omniglot_root!r} is not a folder")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results, errors = run_all(args)
    planned = len(args.seeds) * len([v for v in VARIANTS if not args.variants or v.key in args.variants])
    md = table(results, args)
    os.makedirs(args.docs, exist_ok=True)
    rule = "" if args.step_rule == "tableau" else f" ({args.step_rule} step rule)"
    with open(os.path.join(args.docs, study_name(args) + ".md"), "w") as f:
        f.write(f"# Per-layer RK methods: study results{rule}\n\nMean and Student-t 95% interval over seeds "
                f"{args.seeds} (n = seeds finished of {len(args.seeds)} planned).\n\n{md}\n\nCommand:\n\n"
                "    python scripts/per_layer_study.py "
                + " ".join(a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only") + "\n")
    plot(results, os.path.join(args.docs, study_name(args) + ".png"))
    print(md)
    summary: dict = {b: {k: dict(zip(("mean", "ci95"), mean_interval(v))) | {"values": v} for k, v in r.items()}
                     for b, r in results.items()}
    summary["runs"] = {"finished": sum(len(v) for r in results.values() for v in r.values()),
                       "planned": planned * len(args.benchmarks), "errors": errors}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
