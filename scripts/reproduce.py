#!/usr/bin/env python
"""Reproduce the paper's results (Im, Jiang and Verma, 2019) with one command, and write the report.

    python scripts/reproduce.py --scale smoke          # every experiment, tiny, end to end (about a minute)
    python scripts/reproduce.py --scale cpu            # what a CPU machine can do in hours (the committed report)
    python scripts/reproduce.py --scale paper --device cuda --nproc 8    # the paper's protocols in full
    python scripts/reproduce.py --scale cpu --only table2 --seeds 0 1 2 --jobs 2

Experiments (``--only`` takes a comma-separated subset):

* ``table2``  sinusoid regression, Table 2: euler, midpoint, heun, ralston, itb x seeds, under both step rules
  (``tableau``: each method adapts with ``2 q21 alpha``; ``fixed``: every method adapts with ``alpha``).
* ``table3``  few-shot classification, Table 3: Omniglot 5w1s, 5w5s, 20w1s, 20w5s and MiniImagenet 5w1s, 5w5s
  (MiniImagenet rows say "data not present" unless ``--miniimagenet-root`` or ``$RKMETA_MINIIMAGENET`` is set).
* ``figure3`` Omniglot 5-way 1-shot test accuracy over training, ralston against midpoint, over seeds.
* ``figure5`` 2D navigation: return after 0..9 inner steps on fresh tasks for every method.

Every run is one training script call with explicit flags in its own run folder under
``--out/<scale>/<experiment>/``. A finished run (``metrics.json`` present) is skipped, an interrupted one is
resumed (``--resume``), so the command can be stopped and started again at any time; a run folder made by
another configuration (its ``config.json`` records the command that made it: after a scale's iterations change,
say) is neither counted nor continued, but kept beside as ``<folder>.other-config-N`` and the run trained afresh
(:func:`rkmeta_rl.common.run_record.folder_matches`). Logs of each run go to
``--out/<scale>/logs/``. Each finished run also leaves a small *record* (its portable command, ``metrics.json``
and, for Figure 3, its evaluation curve) under ``--results/<scale>/`` (``results/reproduce/`` in the checkout by
default), a file meant to be committed: a run with a record is finished even when its run folder is gone (another
machine, a cleaned disk), and the report is rebuilt from the records alone. At the end the report
(``docs/reproduction.md`` by default, ``--report``) and its plots
are written from whatever runs have finished: every row holds the paper's number, ours with its interval
(Student t across seeds, n given; a single run's interval is over its test tasks), iterations, wall time and the
exact command. The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import runpy
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:  # `python scripts/reproduce.py` from a checkout without an install still finds the package
    sys.path.insert(0, REPO)

from rkmeta_rl.common.run_record import (  # noqa: E402
    finished_metrics,
    folder_matches,
    portable_command,
    read_record,
)
from rkmeta_rl.stats import mean_interval  # noqa: E402
from rkmeta_rl.utils import write_json_atomic  # noqa: E402

METHODS = ("euler", "midpoint", "heun", "ralston", "itb")
EXPERIMENTS = ("table2", "table3", "figure3", "figure5")

#: The paper's Table 2: query MSE of sinusoid regression after adaptation (Im, Jiang and Verma, 2019).
PAPER_TABLE2 = {"euler": 2.72, "midpoint": 0.13, "heun": 0.19, "ralston": 0.12, "itb": 0.18}
#: The paper's Table 3 entries this repository records (accuracy %, Omniglot 5-way 1-shot). Other cells: the
#: original MAML paper's (Finn et al., 2017, Tables 1 and 2) numbers for MAML (= midpoint) are given instead,
#: marked as such in the report.
PAPER_TABLE3 = {("omniglot", 5, 1, "midpoint"): 98.26, ("omniglot", 5, 1, "ralston"): 99.39}
MAML_2017 = {("omniglot", 5, 1): 98.7, ("omniglot", 5, 5): 99.9, ("omniglot", 20, 1): 95.8,
             ("omniglot", 20, 5): 98.9, ("miniimagenet", 5, 1): 48.70, ("miniimagenet", 5, 5): 63.11}

# Few-shot settings of the paper's protocol (appendix, else the original MAML code): meta-batch, alpha_MAML,
# inner steps in training, test steps, query images per class in training, iterations, filters, pooling.
FEWSHOT = {
    ("omniglot", 5, 1): dict(mb=32, lr=0.4, steps=1, test_steps=3, queries=1, iters=30_000, filters=64, pool="stride"),
    ("omniglot", 5, 5): dict(mb=32, lr=0.4, steps=1, test_steps=3, queries=5, iters=30_000, filters=64, pool="stride"),
    ("omniglot", 20, 1): dict(mb=16, lr=0.1, steps=5, test_steps=5, queries=1, iters=50_000, filters=64,
                              pool="stride"),
    ("omniglot", 20, 5): dict(mb=16, lr=0.1, steps=5, test_steps=5, queries=5, iters=90_000, filters=64,
                              pool="stride"),
    ("miniimagenet", 5, 1): dict(mb=4, lr=0.01, steps=5, test_steps=10, queries=15, iters=90_000, filters=32,
                                 pool="max"),
    ("miniimagenet", 5, 5): dict(mb=2, lr=0.01, steps=5, test_steps=10, queries=15, iters=90_000, filters=32,
                                 pool="max"),
}


@dataclass(frozen=True)
class Scale:
    """How much of each protocol a scale runs (``None`` iterations: the protocol's own)."""

    sinusoid_iterations: int | None
    sinusoid_eval_tasks: int
    sinusoid_compile: bool
    table3_settings: tuple[tuple[str, int, int], ...]      # settings trained at this scale
    table3_methods: tuple[str, ...]
    fewshot_iterations: int | None
    fewshot_eval_tasks: int
    fewshot_eval_interval: int
    fewshot_probe_iterations: int                           # cost probe for settings not trained at this scale
    nav_iterations: int
    nav_eval_tasks: int
    nav_eval_traj: int
    in_process: bool                                       # run scripts inside this process (no start-up cost)


SCALES: dict[str, Scale] = {
    "smoke": Scale(sinusoid_iterations=10, sinusoid_eval_tasks=10, sinusoid_compile=False,
                   table3_settings=(("omniglot", 5, 1),), table3_methods=("midpoint", "ralston"),
                   fewshot_iterations=2, fewshot_eval_tasks=4, fewshot_eval_interval=1, fewshot_probe_iterations=0,
                   nav_iterations=1, nav_eval_tasks=2, nav_eval_traj=2, in_process=True),
    "cpu": Scale(sinusoid_iterations=None, sinusoid_eval_tasks=600, sinusoid_compile=True,
                 table3_settings=(("omniglot", 5, 1),), table3_methods=("midpoint", "ralston"),
                 fewshot_iterations=3000, fewshot_eval_tasks=600, fewshot_eval_interval=250,
                 fewshot_probe_iterations=3, nav_iterations=100, nav_eval_tasks=40, nav_eval_traj=20,
                 in_process=False),
    "paper": Scale(sinusoid_iterations=None, sinusoid_eval_tasks=600, sinusoid_compile=True,
                   table3_settings=tuple(FEWSHOT), table3_methods=("midpoint", "heun", "ralston", "itb"),
                   fewshot_iterations=None, fewshot_eval_tasks=600, fewshot_eval_interval=1000,
                   fewshot_probe_iterations=0, nav_iterations=100, nav_eval_tasks=40, nav_eval_traj=20,
                   in_process=False),
}


@dataclass
class Run:
    """One training-script call and where it lives."""

    experiment: str
    name: str            # unique within the experiment, e.g. "tableau/ralston-s0"
    script: str          # file name under scripts/
    args: list[str]
    logdir: str
    meta: dict[str, Any] = field(default_factory=dict)
    record_path: str = ""  # where its record goes (set by :func:`main`; empty: no record)

    @property
    def has_folder_metrics(self) -> bool:
        return os.path.isfile(os.path.join(self.logdir, "metrics.json"))

    def record(self) -> dict[str, Any] | None:
        """Its record, when one was made by this same configuration."""
        return read_record(self.record_path, self.portable()) if self.record_path else None

    @property
    def done(self) -> bool:
        return self.metrics() is not None

    def metrics(self) -> dict[str, Any] | None:
        """``metrics.json`` from the run folder (recording it when it has no record yet), else from the run's
        record; None when not finished."""
        return finished_metrics(self.logdir, self.record_path, self.portable(), self._record_extra)

    def portable(self) -> list[str]:
        """The script and its flags without what depends on the machine (what a record is matched on)."""
        dataset = self.args[self.args.index("--dataset") + 1] if "--dataset" in self.args else "omniglot"
        return [self.script, *portable_command(self.args, DATA_ENV_VARS.get(dataset))]

    def _record_extra(self) -> dict[str, Any]:
        """What the record holds besides the metrics: the shown command, Figure 3's curve for few-shot runs."""
        extra: dict[str, Any] = {"shown": self.shown()}
        if self.experiment == "table3":
            steps, vals = _read_eval_curve(self.logdir)
            extra["eval_curve"] = {"iterations": steps, "accuracy": vals}
        return extra

    def eval_curve(self) -> tuple[list[int], list[float]]:
        """The periodic evaluation's accuracy curve: from the run folder's events, else from the record."""
        if os.path.isdir(self.logdir):
            return _read_eval_curve(self.logdir)
        curve = (self.record() or {}).get("eval_curve") or {}
        return list(curve.get("iterations", [])), list(curve.get("accuracy", []))

    def command(self, nproc: int = 1) -> list[str]:
        launcher = (["torchrun", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else ["python"])
        return [*launcher, f"scripts/{self.script}", *self.args, "--logdir", self.logdir]

    def shown(self) -> str:
        """The command as the report prints it: a dataset's location is its environment variable
        (``"$RKMETA_OMNIGLOT"``), not the folder it has on the machine that ran it."""
        cmd = self.command()
        if "--data-root" not in cmd:
            return shlex.join(cmd)
        i = cmd.index("--data-root")
        dataset = cmd[cmd.index("--dataset") + 1] if "--dataset" in cmd else "omniglot"
        return f'{shlex.join(cmd[:i + 1])} "${DATA_ENV_VARS[dataset]}" {shlex.join(cmd[i + 2:])}'


#: the environment variable each dataset's location is read from (the report prints it in place of the path)
DATA_ENV_VARS = {"omniglot": "RKMETA_OMNIGLOT", "miniimagenet": "RKMETA_MINIIMAGENET"}


# --------------------------------------------------------------------------------------------------
# the runs of each experiment
# --------------------------------------------------------------------------------------------------


def table2_runs(scale: Scale, root: str, seeds: Sequence[int]) -> list[Run]:
    runs = []
    for seed in seeds:
        for rule in ("tableau", "fixed"):
            for m in METHODS:
                args = ["--method", m, "--seed", str(seed), "--step-rule", rule,
                        "--iterations", str(scale.sinusoid_iterations or 100_000),
                        "--eval-tasks", str(scale.sinusoid_eval_tasks), "--test-inner-steps", "10", "--no-progress"]
                if not scale.sinusoid_compile:
                    args.append("--no-compile")
                if scale.sinusoid_iterations is not None and scale.sinusoid_iterations < 1000:
                    args += ["--eval-interval", "0", "--checkpoint-interval", "10", "--log-interval", "10"]
                runs.append(Run("table2", f"{rule}/{m}-s{seed}", "train_sinusoid.py", args,
                                os.path.join(root, f"table2-{rule}", f"{m}-s{seed}"),
                                {"method": m, "rule": rule, "seed": seed}))
    return runs


def _fewshot_args(setting: tuple[str, int, int], method: str, seed: int, iterations: int, eval_tasks: int,
                  eval_interval: int, data_root: str | None) -> list[str]:
    dataset, ways, shots = setting
    s = FEWSHOT[setting]
    args = ["--dataset", dataset, "--ways", str(ways), "--shots", str(shots), "--queries", str(s["queries"]),
            "--method", method, "--seed", str(seed), "--iterations", str(iterations),
            "--meta-batch-size", str(s["mb"]), "--inner-lr", str(s["lr"]), "--inner-steps", str(s["steps"]),
            "--test-inner-steps", str(s["test_steps"]), "--filters", str(s["filters"]), "--pool", s["pool"],
            "--eval-tasks", str(eval_tasks), "--eval-interval", str(eval_interval),
            "--checkpoint-interval", str(max(1, min(200, iterations))), "--log-interval",
            str(max(1, min(50, eval_interval))), "--no-progress"]
    if data_root:
        args += ["--data-root", data_root]
    return args


def table3_runs(scale: Scale, root: str, seeds: Sequence[int], data: dict[str, str | None]) -> list[Run]:
    runs = []
    for setting in FEWSHOT:
        dataset, ways, shots = setting
        if data.get(dataset) is None:
            continue
        tag = f"{dataset}-{ways}w{shots}s"
        if setting in scale.table3_settings:
            iters = scale.fewshot_iterations or FEWSHOT[setting]["iters"]
            for seed in seeds:  # seed-major: a partial Table 3 compares methods on the same seeds
                for m in scale.table3_methods:
                    runs.append(Run("table3", f"{tag}/{m}-s{seed}", "train_fewshot.py",
                                    _fewshot_args(setting, m, seed, iters, scale.fewshot_eval_tasks,
                                                  scale.fewshot_eval_interval, data[dataset]),
                                    os.path.join(root, "table3", tag, f"{m}-s{seed}"),
                                    {"setting": setting, "method": m, "seed": seed, "probe": False}))
        elif scale.fewshot_probe_iterations > 0:
            n = scale.fewshot_probe_iterations
            runs.append(Run("table3", f"{tag}/probe", "train_fewshot.py",
                            _fewshot_args(setting, "midpoint", 0, n, 10, 0, data[dataset]),
                            os.path.join(root, "table3", tag, "cost-probe"),
                            {"setting": setting, "method": "midpoint", "seed": 0, "probe": True}))
    return runs


def figure5_runs(scale: Scale, root: str, seeds: Sequence[int]) -> list[Run]:
    runs = []
    for seed in seeds:
        for m in METHODS:
            args = ["--method", m, "--seed", str(seed), "--iterations", str(scale.nav_iterations), "--no-progress"]
            if scale.nav_iterations < 10:
                args += ["--fast-batch-size", "2", "--meta-batch-size", "2", "--figure-interval", "0",
                         "--checkpoint-interval", "1"]
            runs.append(Run("figure5", f"{m}-s{seed}", "train_nav.py", args,
                            os.path.join(root, "figure5", f"{m}-s{seed}"), {"method": m, "seed": seed}))
    return runs


# --------------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------------


def execute(run: Run, log_dir: str, nproc: int, in_process: bool, device: str) -> tuple[Run, str | None]:
    """Run (or resume) one run; returns ``(run, error)`` with ``error`` None on success."""
    if run.done:
        return run, None
    args = list(run.args)
    if device != "auto":
        args += ["--device", device]
    same = folder_matches(run.logdir, run.portable())
    resume = same and any(os.path.isfile(os.path.join(run.logdir, f))
                          for f in ("checkpoint_latest.pt", "checkpoint_final.pt"))
    if resume:
        args.append("--resume")
    elif os.path.isdir(run.logdir) and os.listdir(run.logdir):
        # a run that died before its first checkpoint, or a folder made by another configuration (other
        # iterations, say: never continued as this run): the training scripts refuse a used folder for a fresh
        # run, so keep what it holds beside, under a new name, and start again
        tag, n = ("failed" if same else "other-config"), 0
        while os.path.exists(f"{run.logdir}.{tag}-{n}"):
            n += 1
        os.replace(run.logdir, f"{run.logdir}.{tag}-{n}")
    os.makedirs(os.path.dirname(run.logdir), exist_ok=True)
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, run.experiment + "-" + run.name.replace("/", "-") + ".log")
    argv = [*args, "--logdir", run.logdir]
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"\n# {_dt.datetime.now().isoformat(timespec='seconds')}: {shlex.join(run.command(nproc))}"
                  f"{' --resume' if resume else ''}\n")
        log.flush()
        if in_process and nproc == 1:
            err = _run_in_process(os.path.join(HERE, run.script), argv, log)
        else:
            launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                        if nproc > 1 else [sys.executable])
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                       PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
            proc = subprocess.run([*launcher, os.path.join(HERE, run.script), *argv], stdout=log,
                                  stderr=subprocess.STDOUT, cwd=REPO, env=env)
            err = None if proc.returncode == 0 else f"exit code {proc.returncode}"
        log.write(f"# finished in {time.perf_counter() - t0:.1f} s: {err or 'ok'}\n")
    if err is None and not run.has_folder_metrics:
        err = "the script ended without writing metrics.json"
    if err is None:
        run.metrics()  # writes its record
    return run, (None if err is None else f"{err}; log: {log_path}")


def _run_in_process(script: str, argv: list[str], log: Any) -> str | None:
    """Run ``script`` as ``__main__`` in this process with its output sent to ``log``."""
    import contextlib

    old_argv = sys.argv
    sys.argv = [script, *argv]
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            runpy.run_path(script, run_name="__main__")
        return None
    except SystemExit as exc:
        return None if exc.code in (None, 0) else f"exit: {exc.code}"
    except Exception as exc:  # noqa: BLE001 - reported per run, the other runs go on
        return f"{type(exc).__name__}: {exc}"
    finally:
        sys.argv = old_argv


def run_all(runs: list[Run], log_dir: str, nproc: int, jobs: int, in_process: bool, device: str,
            progress: bool) -> list[str]:
    """Run every unfinished run (``jobs`` at a time); returns the errors."""
    todo = [r for r in runs if not r.done]
    errors: list[str] = []
    if not todo:
        return errors
    from tqdm.auto import tqdm

    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), desc="runs", unit="run", disable=not progress,
               dynamic_ncols=True)
    in_proc = in_process and jobs == 1
    with ThreadPoolExecutor(max_workers=1 if in_proc else jobs) as pool:
        for run, err in pool.map(lambda r: execute(r, log_dir, nproc, in_proc, device), todo):
            bar.update(1)
            bar.set_postfix_str(run.experiment + "/" + run.name)
            if err:
                errors.append(f"{run.experiment}/{run.name}: {err}")
    bar.close()
    return errors


# --------------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------------


def _fmt(mean: float, half: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "diverges"
    return f"{mean:.{digits}f}" + ("" if not math.isfinite(half) else f" ± {half:.{digits}f}")


def summarise_table2(runs: list[Run], archived: dict[tuple[str, str], dict[str, Any]] | None = None
                     ) -> list[dict[str, Any]]:
    """One row per step rule and method from the finished runs; a row with no finished run takes its archived
    row (``archived``: numbers of a report whose runs left no records) when there is one."""
    rows = []
    for rule in ("tableau", "fixed"):
        for m in METHODS:
            mine = [r for r in runs if r.meta["rule"] == rule and r.meta["method"] == m]
            ms = [x for r in mine if (x := r.metrics()) is not None]
            row: dict[str, Any] = {"rule": rule, "method": m, "paper": PAPER_TABLE2[m], "seeds": len(ms),
                                   "planned_seeds": len(mine), "command": mine[0].shown() if mine else ""}
            if ms:
                for key, steps in (("mse_1", 1), ("mse_10", 10)):
                    vals = [x["mse_per_step"][steps] if len(x.get("mse_per_step", [])) > steps else float("nan")
                            for x in ms]
                    finite = [v for v in vals if math.isfinite(v)]
                    row[key + "_diverged_seeds"] = len(vals) - len(finite)
                    if len(ms) > 1:
                        mean, half, _ = mean_interval(vals)
                    else:  # one run: the interval over its test tasks
                        mean = vals[0]
                        half = ms[0].get(f"mse_{steps}_step{'s' if steps > 1 else ''}_ci95", float("nan"))
                    row[key], row[key + "_half"] = mean, half
                    row[key + "_finite_mean"] = float(np.mean(finite)) if finite else float("nan")
                med = [x.get("mse_10_steps_median", float("nan")) for x in ms]
                row["mse_10_median"] = float(np.median(med))
                row["iterations"] = int(ms[0]["iterations"])
                row["seconds"] = float(np.mean([x["seconds"] for x in ms]))
                row["eval_tasks"] = int(ms[0].get("eval_tasks", 0))
                row["adapt_lr"] = ms[0].get("adapt_lr")
                per_step = np.array([x["mse_per_step"] for x in ms], dtype=float)
                row["mse_per_step"] = [float(v) for v in per_step.mean(0)]
            elif archived and (rule, m) in archived:
                row.update({k: (float("nan") if v is None else v) for k, v in archived[(rule, m)].items()},
                           archived=True)
            rows.append(row)
    return rows


#: file (under a scale's records) of Table 2 rows kept from a report whose runs left no records
ARCHIVED_TABLE2 = "archived_rows.json"


def load_archived_table2(folder: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Archived Table 2 rows by ``(rule, method)``: ``{"source": "...", "rows": [{"rule", "method", ...}]}``."""
    path = os.path.join(folder, ARCHIVED_TABLE2)
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        data = json.load(fh)
    return {(r["rule"], r["method"]): {**r, "source": data.get("source", "")} for r in data["rows"]}


def table2_verdicts(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per step rule: how well each number of ours after 1 and after 10 steps matches the paper's Table 2."""
    out: dict[str, dict[str, Any]] = {}
    for rule in ("tableau", "fixed"):
        rr = [r for r in rows if r["rule"] == rule and r.get("seeds")]
        res: dict[str, Any] = {}
        for key in ("mse_1", "mse_10"):
            inside, logerr = 0, []
            for r in rr:
                mean, half = r[key], r[key + "_half"]
                if math.isfinite(mean) and math.isfinite(half) and abs(mean - r["paper"]) <= half:
                    inside += 1
                logerr.append(abs(math.log(mean / r["paper"])) if math.isfinite(mean) and mean > 0 else float("inf"))
            res[key] = {"inside_interval": inside, "methods": len(rr), "diverged": sum(
                1 for r in rr if not math.isfinite(r[key])),
                "mean_abs_log_ratio": float(np.mean(logerr)) if logerr else float("nan")}
        out[rule] = res
    return out


def summarise_table3(runs: list[Run], scale: Scale, data: dict[str, str | None]) -> list[dict[str, Any]]:
    rows = []
    for setting, s in FEWSHOT.items():
        dataset, ways, shots = setting
        methods = scale.table3_methods if setting in scale.table3_settings else ("midpoint", "ralston")
        for m in methods:
            paper = PAPER_TABLE3.get((*setting, m))
            row: dict[str, Any] = {"dataset": dataset, "ways": ways, "shots": shots, "method": m, "paper": paper,
                                   "maml_2017": MAML_2017.get(setting) if m == "midpoint" else None,
                                   "protocol_iterations": s["iters"]}
            if data.get(dataset) is None:
                row["status"] = "data not present"
                rows.append(row)
                continue
            mine = [r for r in runs if r.meta["setting"] == setting and r.meta["method"] == m
                    and not r.meta["probe"]]
            ms = [x for r in mine if (x := r.metrics()) is not None]
            probe = next((r for r in runs if r.meta["setting"] == setting and r.meta["probe"]), None)
            if mine:
                row["command"] = mine[0].shown()
            if not ms:
                if mine:
                    row["status"] = "not finished"
                else:
                    row["status"] = "not run at this scale"
                    pm = probe.metrics() if probe is not None else None
                    if pm is not None and pm.get("iterations"):
                        spi = pm["seconds"] / pm["iterations"]
                        row["seconds_per_iteration"] = spi
                        row["protocol_hours"] = spi * s["iters"] / 3600.0
                        row["command"] = probe.shown()
                rows.append(row)
                continue
            acc = [100.0 * x["accuracy"] for x in ms]
            if len(ms) > 1:
                mean, half, n = mean_interval(acc)
            else:
                mean, half, n = acc[0], 100.0 * ms[0].get("accuracy_ci95", float("nan")), 1
            row.update(status="run", accuracy=mean, accuracy_half=half, seeds=n,
                       iterations=int(np.mean([x["iterations"] for x in ms])),
                       seconds=float(np.mean([x["seconds"] for x in ms])),
                       seconds_per_iteration=float(np.mean([x["seconds"] / max(1, x["iterations"]) for x in ms])),
                       eval_tasks=int(ms[0].get("eval_tasks", 0)))
            row["protocol_hours"] = row["seconds_per_iteration"] * s["iters"] / 3600.0
            rows.append(row)
    return rows


def _read_eval_curve(logdir: str, tag_prefix: str = "eval/acc_") -> tuple[list[int], list[float]]:
    """The periodic evaluation's accuracy after the last test step, from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    best: dict[int, float] = {}
    for rootdir, _, files in os.walk(logdir):
        if not any(f.startswith("events.out.tfevents") for f in files):
            continue
        acc = EventAccumulator(rootdir, size_guidance={"scalars": 0})
        acc.Reload()
        tags = [t for t in acc.Tags().get("scalars", []) if t.startswith(tag_prefix) and not t.endswith("_0_steps")]
        if not tags:
            continue
        tag = max(tags, key=lambda t: int(t[len(tag_prefix):].split("_")[0]))
        for e in acc.Scalars(tag):
            best[int(e.step)] = float(e.value)
    steps = sorted(best)
    return steps, [best[s] for s in steps]


def summarise_figure3(runs: list[Run]) -> dict[str, Any]:
    curves: dict[str, list[tuple[list[int], list[float]]]] = {}
    for r in runs:
        if r.meta["setting"] != ("omniglot", 5, 1) or r.meta["probe"] or not r.done:
            continue
        steps, vals = r.eval_curve()
        if steps:
            curves.setdefault(r.meta["method"], []).append((steps, vals))
    out: dict[str, Any] = {}
    for m, cs in curves.items():
        common = sorted(set.intersection(*(set(s) for s, _ in cs)))
        if not common:
            continue
        table = np.array([[dict(zip(s, v))[k] for k in common] for s, v in cs]) * 100.0
        mh = [mean_interval(table[:, j]) for j in range(len(common))]
        out[m] = {"iterations": common, "mean": [x[0] for x in mh], "half": [x[1] for x in mh], "seeds": len(cs)}
    return out


def summarise_figure5(runs: list[Run], scale: Scale, out_dir: str, cache_dir: str) -> dict[str, Any]:
    """Evaluate every seed's finished runs with ``eval_nav.py`` and average over seeds. Each seed's evaluation is
    kept in ``cache_dir`` (beside the runs' records) and reused while it covers the same runs; a seed whose run
    folders are gone keeps its kept evaluation."""
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in sorted({r.meta["seed"] for r in runs}):
        mine = [r for r in runs if r.meta["seed"] == seed and r.done]
        if not mine:
            continue
        cache = os.path.join(cache_dir, f"eval-s{seed}.json")
        names = [r.name for r in mine]
        cached: dict[str, Any] | None = None
        if os.path.isfile(cache):
            with open(cache) as fh:
                cached = json.load(fh)
            if cached.get("runs") == names and cached.get("tasks") == scale.nav_eval_tasks:
                per_seed[seed] = cached
                continue
        if not all(r.has_folder_metrics for r in mine):  # cannot evaluate what is not on this machine
            if cached is not None:
                per_seed[seed] = cached
            continue
        key = [r.logdir for r in mine]
        argv = [*key, "--tasks", str(scale.nav_eval_tasks), "--traj", str(scale.nav_eval_traj),
                "--out", os.path.join(out_dir, f"eval-s{seed}"),
                "--labels", *[r.meta["method"] for r in mine]]
        with open(os.devnull, "w") as null:
            import contextlib

            with contextlib.redirect_stdout(null):
                res = runpy.run_path(os.path.join(HERE, "eval_nav.py"), run_name="eval_nav")["main"](argv)
        res = {"runs": names, "tasks": scale.nav_eval_tasks, "curves": res["curves"], "oracle": res["oracle"]}
        write_json_atomic(cache, res)
        per_seed[seed] = res
    labels: list[str] = []
    for res in per_seed.values():
        labels += [k for k in res["curves"] if k not in labels]
    curves = {}
    for label in labels:
        rows = np.array([res["curves"][label] for res in per_seed.values() if label in res["curves"]])
        mh = [mean_interval(rows[:, j]) for j in range(rows.shape[1])]
        curves[label] = {"mean": [x[0] for x in mh], "half": [x[1] for x in mh], "seeds": rows.shape[0]}
    oracle = float(np.mean([r["oracle"] for r in per_seed.values()])) if per_seed else float("nan")
    return {"curves": curves, "oracle": oracle, "seeds": sorted(per_seed),
            "command": next((r.shown() for r in runs if r.meta["method"] == "midpoint"), "")}


# --------------------------------------------------------------------------------------------------
# plots and report
# --------------------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_table2(rows: list[dict[str, Any]], path: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, rule in zip(axes, ("tableau", "fixed")):
        rr = [r for r in rows if r["rule"] == rule]
        x = np.arange(len(rr))
        for off, key, label in ((-0.2, "mse_1", "ours, 1 step"), (0.2, "mse_10", "ours, 10 steps")):
            vals = [r.get(key, float("nan")) for r in rr]
            errs = [r.get(key + "_half", float("nan")) for r in rr]
            shown = [v if math.isfinite(v) else np.nan for v in vals]
            ax.bar(x + off, shown, 0.38, yerr=[e if math.isfinite(e) else 0 for e in errs], label=label, capsize=3)
            for xi, v in zip(x, vals):
                if not math.isfinite(v) and any(r.get("seeds") for r in rr):
                    ax.text(xi + off, 0.05, "diverges", rotation=90, ha="center", va="bottom", fontsize=7)
        ax.scatter(x, [r["paper"] for r in rr], color="k", marker="_", s=400, zorder=3, label="paper")
        ax.set_xticks(x, [r["method"] for r in rr])
        ax.set_yscale("log")
        ax.set_title(f"step rule: {rule}")
        ax.set_ylabel("query MSE")
    axes[0].legend(fontsize=8)
    fig.suptitle("Table 2: sinusoid regression (mean over seeds, 95 % t-interval)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves: dict[str, dict[str, Any]], xs_key: str | None, path: str, title: str, xlabel: str,
                ylabel: str, hline: float | None = None) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, c in curves.items():
        xs = np.array(c[xs_key] if xs_key else range(len(c["mean"])))
        mean, half = np.array(c["mean"]), np.nan_to_num(np.array(c["half"], dtype=float))
        style = dict(color="0.5", ls=":") if label == "random init" else {}
        ax.plot(xs, mean, marker="o", ms=3, label=f"{label} (n={c['seeds']})", **style)
        ax.fill_between(xs, mean - half, mean + half, alpha=0.2, **({"color": "0.5"} if style else {}))
    if hline is not None and math.isfinite(hline):
        ax.axhline(hline, color="k", ls="--", lw=1, label="oracle")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _shown_argv(argv: Sequence[str]) -> str:
    """``argv`` for the report, dataset folders given as their environment variables (like :meth:`Run.shown`)."""
    flags = {"--omniglot-root": "omniglot", "--miniimagenet-root": "miniimagenet"}
    out, hide = [], None
    for a in argv:
        if hide is not None:
            out.append(f'"${DATA_ENV_VARS[hide]}"')
            hide = None
            continue
        name, eq, _ = a.partition("=")
        if name in flags and eq:
            out.append(f'{name} "${DATA_ENV_VARS[flags[name]]}"')
            continue
        hide = flags.get(a)
        out.append(shlex.quote(a))
    return " ".join(out)


def write_report(path: str, scale_name: str, seeds: Sequence[int], sections: dict[str, Any], errors: list[str],
                 argv: Sequence[str], progress: tuple[int, int]) -> None:
    import torch

    lines = [
        "# Reproduction report",
        "",
        f"Generated by `python scripts/reproduce.py {_shown_argv(argv)}` on "
        f"{_dt.date.today().isoformat()} ({platform.machine()}, {os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}; scale `{scale_name}`, seeds {list(seeds)}). Each row's exact command is given; "
        "every run folder also holds `metrics.json`, checkpoints and TensorBoard events. "
        "Intervals: across seeds the 95 % Student-t interval of the mean (n = number of seeds, t(0.975, 2) = 4.30 "
        "for three); for a single run the 95 % interval over its test tasks.",
        "",
        f"**Runs finished: {progress[0]} of the {progress[1]} this scale plans.** Rows show how many seeds they "
        "hold; the same command continues the rest (finished runs are skipped)."
        + (f" {archived} of the unfinished runs are Table 2 runs whose rows are archived (see there)."
           if (archived := sum(r["seeds"] for r in sections.get("table2", {}).get("rows", []) if r.get("archived")))
           else ""),
        "",
    ]
    if "table2" in sections:
        lines += _report_table2(sections["table2"])
    if "table3" in sections:
        lines += _report_table3(sections["table3"])
    if "figure3" in sections:
        lines += _report_figure3(sections["figure3"])
    if "figure5" in sections:
        lines += _report_figure5(sections["figure5"])
    if errors:
        lines += ["## Runs that failed", "", *[f"* {e}" for e in errors], ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines).rstrip() + "\n")


def _report_table2(sec: dict[str, Any]) -> list[str]:
    rows, verdicts = sec["rows"], sec["verdicts"]
    out = ["## Table 2: sinusoid regression", "",
           "Query MSE on fresh tasks after 1 and 10 test-time steps (K = 10, 100,000 meta-iterations at the paper "
           "scale), each method adapting at its own training step size. `tableau`: alpha = 2 q21 x 0.01 (heun and "
           "itb adapt with 0.02, ralston 0.015); `fixed`: every method adapts with 0.01, as the paper's appendix "
           "states (\"a fixed step size of 0.01\").", "",
           "| step rule | method | paper | ours, 1 step | ours, 10 steps | 10 steps, median task | seeds | "
           "iterations | s/run |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r.get("seeds"):
            out.append(f"| {r['rule']} | {r['method']} | {r['paper']} | not run yet | | | 0/{r['planned_seeds']} "
                       "| | |")
            continue
        ten = _fmt(r["mse_10"], r["mse_10_half"])
        if r.get("mse_10_diverged_seeds"):
            ten += f" ({r['mse_10_diverged_seeds']}/{r['seeds']} seeds diverge)"
        seeds = f"{r['seeds']}{' (archived)' if r.get('archived') else ''}"
        out.append(f"| {r['rule']} | {r['method']} | {r['paper']} | {_fmt(r['mse_1'], r['mse_1_half'])} | {ten} | "
                   f"{r['mse_10_median']:.4f} | {seeds} | {r['iterations']} | {r['seconds']:.1f} |")
    sources = sorted({r["source"] for r in rows if r.get("archived")})
    if sources:
        out += ["", "Rows marked *(archived)* have no per-run records: their runs finished before records were kept "
                "and their run folders are gone, so their numbers are carried over as published (" +
                "; ".join(sources) + "). Running their commands again replaces them with per-run records."]
    out += ["", "![Table 2](reproduction_table2.png)", "", "How each step rule matches the paper (methods whose "
            "paper value lies inside our interval; mean |log(ours / paper)|, smaller is closer):", "",
            "| step rule | inside, 1 step | inside, 10 steps | diverged at 10 steps | mean abs log ratio, 1 step | "
            "10 steps |", "|---|---|---|---|---|---|"]
    for rule, v in verdicts.items():
        out.append(f"| {rule} | {v['mse_1']['inside_interval']}/{v['mse_1']['methods']} | "
                   f"{v['mse_10']['inside_interval']}/{v['mse_10']['methods']} | {v['mse_10']['diverged']} | "
                   f"{v['mse_1']['mean_abs_log_ratio']:.2f} | {v['mse_10']['mean_abs_log_ratio']:.2f} |")
    if sec.get("commands"):
        out += ["", "Commands (one per method, seed and rule; shown for seed 0):", "", "```bash",
                *sec["commands"], "```"]
    return out + [""]


def _report_table3(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## Table 3: few-shot classification", "",
           "Test accuracy (%) on 600 episodes after the protocol's test steps (Omniglot 5-way: 3 steps at 0.4; "
           "20-way: 5 at 0.1; MiniImagenet: 10 at 0.01), training with the paper's protocol "
           "(K query images per class for Omniglot, 15 for MiniImagenet). `paper`: the RK paper's Table 3 where "
           "this repository records it; `MAML 2017`: Finn et al.'s published number for MAML (= midpoint). Rows "
           "not trained at this scale show the seconds per iteration of a 3-iteration cost probe (its command; "
           "start-up and a 10-episode evaluation included, on this machine while other jobs shared it, so an "
           "upper bound) and what the protocol's iterations would cost here.", "",
           "| setting | method | paper | MAML 2017 | ours | iterations (protocol) | s/iteration | protocol cost "
           "here | status | command |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        setting = f"{r['dataset']} {r['ways']}-way {r['shots']}-shot"
        ours = _fmt(r["accuracy"], r["accuracy_half"], 1) + f" (n={r['seeds']})" if r.get("status") == "run" else ""
        its = f"{r.get('iterations', '')} ({r['protocol_iterations']})"
        spi = f"{r['seconds_per_iteration']:.2f}" if "seconds_per_iteration" in r else ""
        hours = f"{r['protocol_hours']:.0f} h" if "protocol_hours" in r else ""
        status = r.get("status", "")
        ref, ref_name = (r["paper"], "paper") if r.get("paper") is not None else (r.get("maml_2017"), "MAML 2017")
        if status == "run" and ref is not None and math.isfinite(r.get("accuracy_half", float("nan"))):
            gap = r["accuracy"] - ref
            status = (f"reproduced ({ref_name} inside interval)" if abs(gap) <= r["accuracy_half"]
                      else f"gap {gap:+.1f} points to {ref_name} at {r['iterations']} of {r['protocol_iterations']} "
                      "iterations")
        elif status == "run" and r.get("iterations", 0) < r["protocol_iterations"]:
            status = f"{r['iterations']} of {r['protocol_iterations']} iterations"
        cmd = f"`{r['command']}`" if r.get("command") else ""
        out.append(f"| {setting} | {r['method']} | {r['paper'] if r['paper'] is not None else '-'} | "
                   f"{r['maml_2017'] if r['maml_2017'] is not None else '-'} | {ours} | {its} | {spi} | {hours} | "
                   f"{status} | {cmd} |")
    return out + [""]


def _report_figure3(sec: dict[str, Any]) -> list[str]:
    out = ["## Figure 3: Omniglot 5-way 1-shot accuracy over training", ""]
    if not sec:
        return out + ["No finished evaluation points yet.", ""]
    out += ["![Figure 3](reproduction_figure3.png)", "", "| method | seeds | " + " | ".join(
        f"it {i}" for i in next(iter(sec.values()))["iterations"]) + " |",
            "|---|---|" + "---|" * len(next(iter(sec.values()))["iterations"])]
    for m, c in sec.items():
        out.append(f"| {m} | {c['seeds']} | " + " | ".join(_fmt(a, h, 1) for a, h in zip(c["mean"], c["half"])) + " |")
    out += ["", "Periodic evaluation during training (validation episodes drawn from the test characters with "
            "their own seed stream; the final Table 3 number uses 600 separate test episodes).", ""]
    return out


def _report_figure5(sec: dict[str, Any]) -> list[str]:
    out = ["## Figure 5: 2D navigation, return after 0..9 inner steps", ""]
    if not sec["curves"]:
        return out + ["No finished runs yet.", ""]
    n = len(next(iter(sec["curves"].values()))["mean"])
    out += ["![Figure 5](reproduction_figure5.png)", "",
            "| policy | seeds | " + " | ".join(str(i) for i in range(n)) + " |", "|---|---|" + "---|" * n]
    for label, c in sec["curves"].items():
        out.append(f"| {label} | {c['seeds']} | " + " | ".join(_fmt(a, h, 1) for a, h in zip(c["mean"], c["half"]))
                   + " |")
    out += ["| oracle | | " + " | ".join(f"{sec['oracle']:.1f}" for _ in range(n)) + " |", "",
            f"Seed-paper setting (2x100 ReLU policy, 40 tasks x 20 trajectories, inner lr 0.16), one run per method "
            f"and seed; returns on the same fresh tasks for every policy. Command (seed 0, midpoint shown): "
            f"`{sec['command']}`, then `python scripts/eval_nav.py RUN ...`.", ""]
    return out


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def _data_roots(args: argparse.Namespace) -> dict[str, str | None]:
    """Where each dataset is, or None when it is not present (its rows then say so)."""
    omni = args.omniglot_root or os.environ.get("RKMETA_OMNIGLOT")
    if omni is None:
        try:
            from rkmeta_rl.data import omniglot_root  # the project's default data root

            omni = str(omniglot_root())
        except (ImportError, FileNotFoundError):
            omni = None
    if omni is not None and not any(os.path.isdir(os.path.join(omni, d))
                                    for d in ("images_background", "omniglot-py")):
        omni = None
    mini = args.miniimagenet_root or os.environ.get("RKMETA_MINIIMAGENET")
    if mini is not None and not os.path.isdir(mini):
        mini = None
    return {"omniglot": omni, "miniimagenet": mini}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=tuple(SCALES), default="cpu", help="how much of each protocol to run")
    p.add_argument("--only", default=",".join(EXPERIMENTS),
                   help=f"comma-separated experiments among {', '.join(EXPERIMENTS)} (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds of every experiment (default: 0 for smoke, 0 1 2 otherwise)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda, passed to every training script")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun, data parallel)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once (each with --nproc processes)")
    p.add_argument("--out", default=os.path.join("runs", "reproduce"), help="root of the run folders")
    p.add_argument("--report", default=None, help="report file (Markdown; default docs/reproduction.md, for the "
                   "smoke scale <out>/smoke/reproduction.md so a trial run leaves the committed report alone)")
    p.add_argument("--results", default=None,
                   help="root of the runs' records (small JSON files to commit; the report is rebuilt from them; "
                   "default results/reproduce in the checkout, for the smoke scale <out>/smoke/records)")
    p.add_argument("--omniglot-root", default=None, help="Omniglot folder (default: $RKMETA_OMNIGLOT, then the "
                   "project's data root; `python -m rkmeta_rl.data omniglot` downloads it)")
    p.add_argument("--miniimagenet-root", default=None, help="MiniImagenet folder (default $RKMETA_MINIIMAGENET)")
    p.add_argument("--report-only", action="store_true", help="write the report from finished runs, run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in only if x not in EXPERIMENTS]
    if bad or not only:
        p.error(f"--only takes a comma-separated subset of {', '.join(EXPERIMENTS)}, got {args.only!r}")
    args.only = only
    if args.nproc < 1 or args.jobs < 1:
        p.error("--nproc and --jobs must be >= 1")
    if args.seeds is None:
        args.seeds = [0] if args.scale == "smoke" else [0, 1, 2]
    trial = args.scale == "smoke"  # a trial run: nothing it writes goes into docs/ or results/
    if args.report is None:
        args.report = (os.path.join(args.out, "smoke", "reproduction.md") if trial
                       else os.path.join("docs", "reproduction.md"))
    if args.results is None:
        args.results = (os.path.join(args.out, "smoke", "records") if trial
                        else os.path.join(REPO, "results", "reproduce"))
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    scale = SCALES[args.scale]
    root = os.path.join(args.out, args.scale)
    data = _data_roots(args)
    groups: dict[str, list[Run]] = {}
    if "table2" in args.only:
        groups["table2"] = table2_runs(scale, root, args.seeds)
    if "table3" in args.only or "figure3" in args.only:
        groups["table3"] = table3_runs(scale, root, args.seeds, data)
    if "figure5" in args.only:
        groups["figure5"] = figure5_runs(scale, root, args.seeds)
    records = os.path.join(args.results, args.scale)
    for run in (r for g in groups.values() for r in g):
        run.record_path = os.path.join(records, run.experiment, run.name + ".json")
        run.metrics()  # a run that finished before records were kept gets its record
    errors: list[str] = []
    if not args.report_only:
        order = [r for g in ("table2", "figure5", "table3") for r in groups.get(g, [])]
        errors = run_all(order, os.path.join(root, "logs"), args.nproc, args.jobs, scale.in_process,
                         args.device, not args.no_progress)
    report_dir = os.path.dirname(os.path.abspath(args.report))
    os.makedirs(report_dir, exist_ok=True)
    sections: dict[str, Any] = {}
    if "table2" in args.only:
        rows = summarise_table2(groups["table2"], load_archived_table2(os.path.join(records, "table2")))
        cmds = [r.shown() for r in groups["table2"] if r.meta["seed"] == args.seeds[0]]
        sections["table2"] = {"rows": rows, "verdicts": table2_verdicts(rows), "commands": cmds}
        plot_table2(rows, os.path.join(report_dir, "reproduction_table2.png"))
    if "table3" in args.only:
        sections["table3"] = summarise_table3(groups["table3"], scale, data)
    if "figure3" in args.only:
        sections["figure3"] = summarise_figure3(groups["table3"])
        if sections["figure3"]:
            plot_curves(sections["figure3"], "iterations", os.path.join(report_dir, "reproduction_figure3.png"),
                        "Omniglot 5-way 1-shot: test accuracy during training", "meta-iteration", "accuracy (%)")
    if "figure5" in args.only:
        sections["figure5"] = summarise_figure5(groups["figure5"], scale, os.path.join(root, "figure5"),
                                                os.path.join(records, "figure5"))
        if sections["figure5"]["curves"]:
            plot_curves(sections["figure5"]["curves"], None, os.path.join(report_dir, "reproduction_figure5.png"),
                        "2D navigation: adaptation on fresh tasks", "number of gradient steps", "average return",
                        hline=sections["figure5"]["oracle"])
    summary = {"scale": args.scale, "report": args.report, "errors": errors,
               "finished_runs": sum(r.done for g in groups.values() for r in g),
               "planned_runs": sum(len(g) for g in groups.values())}
    write_report(args.report, args.scale, args.seeds, sections, errors, argv,
                 (summary["finished_runs"], summary["planned_runs"]))
    with open(os.path.join(root, "summary.json") if os.path.isdir(root) else os.devnull, "w") as fh:
        json.dump({"summary": summary, "sections": sections}, fh, default=_json_default, indent=1)
    print(json.dumps(summary))
    return summary


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return str(obj)


if __name__ == "__main__":
    main()
