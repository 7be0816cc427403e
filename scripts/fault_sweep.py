#!/usr/bin/env python
"""Fault sweep: bad input, changed settings on resume, preemption and damaged files, against short real runs.

Command-line cases run the real scripts (``scripts/train_*.py``) as subprocesses; library cases call the library.
Every case classifies its outcome as one of

- ``clear_error_or_correct``: a one-line error naming the setting (CLI: ``error: ...`` on stderr, non-zero exit,
  no traceback; library: a single-line exception of the expected type naming the setting), or the right result;
- ``silent_wrong``: accepted what it should refuse, or gave a wrong result;
- ``work_lost``: a signal or a damaged file cost completed iterations;
- ``traceback``: a CLI case printed ``Traceback (most recent call last)``, or an error that does not name the
  setting (or of an unexpected type).

Prints one table row per case on stderr and, as the LAST line on stdout, one JSON object::

    {"cases": N, "clear_error_or_correct": N, "silent_wrong": 0, "work_lost": 0, "tracebacks": 0,
     "failed_cases": []}

    python scripts/fault_sweep.py              # every case (a few minutes)
    python scripts/fault_sweep.py --fast       # the subset the default tests run
    python scripts/fault_sweep.py --only sigterm_resume_exact,nan_reward_family
    python scripts/fault_sweep.py --list

Exit status 1 when any case is not ``clear_error_or_correct``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
CLEAR, SILENT, LOST, TRACE = "clear_error_or_correct", "silent_wrong", "work_lost", "traceback"
Outcome = tuple[str, str]  # (class, detail)

NAV_TINY = ["--config", "reference", "--meta-batch-size", "2", "--fast-batch-size", "2", "--horizon", "10",
            "--hidden-sizes", "8", "--no-progress", "--figure-interval", "0", "--device", "cpu"]
LOCO_TINY = ["--meta-batch-size", "2", "--fast-batch-size", "2", "--horizon", "5", "--hidden-sizes", "8",
             "--no-progress", "--device", "cpu"]
SIN_TINY = ["--meta-batch-size", "3", "--no-compile", "--eval-tasks", "4", "--log-interval", "5",
            "--eval-interval", "0", "--checkpoint-interval", "5", "--test-inner-steps", "2", "--no-progress",
            "--device", "cpu"]
FEW_TINY = ["--dataset", "miniimagenet", "--ways", "2", "--shots", "1", "--queries", "1", "--filters", "4",
            "--eval-tasks", "2", "--eval-interval", "0", "--meta-batch-size", "2", "--inner-steps", "1",
            "--test-inner-steps", "1", "--no-progress", "--device", "cpu"]


# ---- running and judging ---------------------------------------------------------------------------------------
def cli(script: str, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/<script>`` with ``argv`` in a fresh interpreter (one thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(SCRIPTS / script), *argv], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=str(ROOT))


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def judge_refusal(proc: subprocess.CompletedProcess[str], *needles: str) -> Outcome:
    """A CLI refusal: non-zero exit, no traceback, last stderr line ``error: ...`` naming every needle."""
    err = proc.stderr
    if "Traceback (most recent call last)" in err:
        return TRACE, _last_line(err)[:200]
    if proc.returncode == 0:
        return SILENT, "exit 0: accepted"
    line = _last_line(err)
    if not line.startswith("error: "):
        return TRACE, f"exit {proc.returncode}, last line {line[:200]!r}"
    missing = [n for n in needles if n not in line]
    if missing:
        return TRACE, f"does not name {missing}: {line[:200]}"
    return CLEAR, line[:200]


def judge_ok(proc: subprocess.CompletedProcess[str]) -> Outcome | None:
    """``None`` when a run that should succeed did; else its outcome."""
    if "Traceback (most recent call last)" in proc.stderr:
        return TRACE, _last_line(proc.stderr)[:200]
    if proc.returncode != 0:
        return SILENT, f"exit {proc.returncode}: {_last_line(proc.stderr)[:200]}"
    return None


def judge_raises(fn: Callable[[], Any], types: tuple[type[BaseException], ...], *needles: str) -> Outcome:
    """A library refusal: ``fn`` raises one of ``types`` with a single-line message naming every needle."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except types as err:
        msg = str(err)
        missing = [n for n in needles if n not in msg]
        if missing:
            return TRACE, f"{type(err).__name__} does not name {missing}: {msg[:200]}"
        if "\n" in msg.strip():
            return TRACE, f"{type(err).__name__} message has several lines: {msg[:200]}"
        return CLEAR, f"{type(err).__name__}: {msg[:200]}"
    except Exception as err:  # noqa: BLE001 - classifying is the point
        return TRACE, f"{type(err).__name__}: {str(err)[:200]}"
    return SILENT, "no error raised"


def _final_params(logdir: Path) -> dict[str, Any]:
    import torch

    return torch.load(logdir / "checkpoint_final.pt", weights_only=True)["params"]


def _same_params(a: Path, b: Path) -> bool:
    import torch

    pa, pb = _final_params(a), _final_params(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def _progress_iterations(logdir: Path) -> list[int]:
    with open(logdir / "progress.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    col = rows[0].index("time/iterations")
    return [int(float(r[col])) for r in rows[1:] if r and r[col] != ""]


def _continuous(logdir: Path, step: int, last: int) -> Outcome | None:
    """``None`` when progress.csv logs every ``step`` iterations up to ``last`` exactly once."""
    its = _progress_iterations(logdir)
    want = list(range(step, last + 1, step))
    if its != want:
        return SILENT, f"progress.csv iterations {its} != {want}"
    leftovers = sorted(p.name for p in logdir.glob("progress.*.csv"))
    if leftovers:
        return SILENT, f"overlapping logs left beside progress.csv: {leftovers}"
    return None


# ---- shared fixtures (made once per sweep, lazily) -----------------------------------------------------------
class Fixtures:
    """Base runs and synthetic data shared by several cases; each made the first time a case asks."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._made: dict[str, Any] = {}

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def _run(self, key: str, script: str, argv: list[str]) -> Path:
        """The run folder ``<tmp>/<key>`` of ``script argv --logdir it``, run the first time it is asked for."""
        def make() -> Path:
            run = self.tmp / key
            proc = cli(script, [*argv, "--logdir", str(run)])
            if proc.returncode != 0:
                raise RuntimeError(f"{key}: {script} failed: {_last_line(proc.stderr)}")
            return run
        return self._once(key, make)

    def nav_run(self) -> Path:
        return self._run("nav-base", "train_nav.py", [*NAV_TINY, "--iterations", "1"])

    def sin_run(self) -> Path:
        return self._run("sin-base", "train_sinusoid.py", [*SIN_TINY, "--iterations", "5"])

    def sin_reference(self, n: int, extra: tuple[str, ...] = ()) -> Path:
        """An uninterrupted sinusoid run of ``n`` iterations (the exactness reference)."""
        return self._run(f"sin-ref-{n}{''.join(extra)}", "train_sinusoid.py",
                         [*SIN_TINY, *extra, "--iterations", str(n)])

    def mini(self) -> Path:
        """A tiny MiniImagenet in the pickle form: 5/2/3 classes of 4 random 84x84 images."""
        def make() -> Path:
            root = self.tmp / "mini"
            root.mkdir()
            rng = np.random.default_rng(0)
            for split, n_cls in (("train", 5), ("validation", 2), ("test", 3)):
                data = rng.integers(0, 256, size=(n_cls * 4, 84, 84, 3), dtype=np.uint8)
                class_dict = {f"n{split[:3]}{c:05d}": list(range(4 * c, 4 * c + 4)) for c in range(n_cls)}
                with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as fh:
                    pickle.dump({"image_data": data, "class_dict": class_dict}, fh)
            return root
        return self._once("mini", make)

    def few_run(self) -> tuple[Path, list[str]]:
        flags = [*FEW_TINY, "--data-root", str(self.mini()), "--cache-dir", str(self.tmp / "few-cache")]
        run = self._run("few-base", "train_fewshot.py", [*flags, "--iterations", "1"])
        return run, [*flags, "--logdir", str(run)]


def omniglot_tree(base: Path, chars: int = 2, drawings: int = 3) -> Path:
    """A synthetic Omniglot layout; every drawing distinct (random ink), all files of one size (uncompressed)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for subset in ("images_background", "images_evaluation"):
        for c in range(chars):
            d = base / subset / "Alpha" / f"character{c + 1:02d}"
            d.mkdir(parents=True)
            for k in range(drawings):
                img = Image.fromarray(rng.random((105, 105)) > 0.3).convert("1")
                img.save(d / f"{c}_{k:02d}.png", compress_level=0)
    return base


# ---- the cases -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    fast: bool
    run: Callable[[Fixtures, Path], Outcome]
    what: str


CASES: list[Case] = []


def case(name: str, what: str, fast: bool = False) -> Callable[[Callable[[Fixtures, Path], Outcome]], Any]:
    def register(fn: Callable[[Fixtures, Path], Outcome]) -> Callable[[Fixtures, Path], Outcome]:
        CASES.append(Case(name, fast, fn, what))
        return fn
    return register


def _resume_refused(script: str, base: Path, argv: list[str], *needles: str) -> Outcome:
    before = (base / "progress.csv").read_bytes()
    out = judge_refusal(cli(script, [*argv, "--logdir", str(base), "--resume"]), *needles)
    if out[0] == CLEAR and (base / "progress.csv").read_bytes() != before:
        return SILENT, "refused, but progress.csv was changed"
    return out


for _flag, _value, _needles in (("--step-rule", "fixed", ("step_rule='tableau'", "step_rule='fixed'")),
                                ("--inner-steps", "2", ("inner_steps",)),
                                ("--first-order", None, ("first_order",)),
                                ("--max-kl", "0.05", ("max_kl",))):
    def _nav_resume(fx: Fixtures, tmp: Path, flag: str = _flag, value: str | None = _value,
                    needles: tuple[str, ...] = _needles) -> Outcome:
        extra = [flag] if value is None else [flag, value]
        return _resume_refused("train_nav.py", fx.nav_run(), [*NAV_TINY, "--iterations", "2", *extra], *needles)

    case(f"nav_resume_{_flag[2:].replace('-', '_')}", f"train_nav.py --resume with a changed {_flag}")(_nav_resume)


@case("sin_resume_meta_lr", "train_sinusoid.py --resume --meta-lr 0.5 on a 0.001 run", fast=True)
def _sin_meta_lr(fx: Fixtures, tmp: Path) -> Outcome:
    return _resume_refused("train_sinusoid.py", fx.sin_run(), [*SIN_TINY, "--iterations", "10", "--meta-lr", "0.5"],
                           "meta_lr=0.001", "meta_lr=0.5")


@case("few_resume_shots", "train_fewshot.py --resume --shots 2 on a 1-shot run")
def _few_shots(fx: Fixtures, tmp: Path) -> Outcome:
    run, flags = fx.few_run()
    return _resume_refused("train_fewshot.py", run, [*flags, "--iterations", "2", "--shots", "2"],
                           "shots=1", "shots=2")


@case("few_resume_ways", "train_fewshot.py --resume --ways 3 on a 2-way run")
def _few_ways(fx: Fixtures, tmp: Path) -> Outcome:
    run, flags = fx.few_run()
    return _resume_refused("train_fewshot.py", run, [*flags, "--iterations", "2", "--ways", "3"], "ways=2", "ways=3")


def signal_mid_run(script: str, argv: list[str], run: Path, sig: signal.Signals) -> tuple[int, str] | Outcome:
    """Start ``script argv --logdir run``, send ``sig`` once its first checkpoint exists; ``(exit code, stderr)``,
    or the outcome when the run ended before its first checkpoint or the signal gave a traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / script), *argv, "--logdir", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint_latest.pt").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            return TRACE, f"run ended before its first checkpoint: {_last_line(err)[:200]}"
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if "Traceback (most recent call last)" in err:
        return TRACE, _last_line(err)[:200]
    return proc.returncode, err


def _signal_then_resume(fx: Fixtures, tmp: Path, sig: signal.Signals, code: int) -> Outcome:
    """A real signal to a real sinusoid run after its first checkpoint; then --resume must end where an
    uninterrupted run ends, bit for bit, with one continuous progress.csv."""
    n, extra = 60, ("--method", "heun")
    argv = [*SIN_TINY, *extra, "--iterations", str(n)]
    run = tmp / "run"
    got = signal_mid_run("train_sinusoid.py", argv, run, sig)
    if isinstance(got[0], str):
        return got  # type: ignore[return-value]
    rc, err = got
    if (run / "checkpoint_final.pt").exists():
        return CLEAR, "the run finished before the signal arrived (nothing to lose)"
    if rc != code:
        return LOST, f"exit {rc} (want {code}): {_last_line(err)[:200]}"
    if "checkpoint written" not in err:
        return LOST, f"no 'checkpoint written' line: {_last_line(err)[:200]}"
    import torch

    stopped = int(torch.load(run / "checkpoint_latest.pt", weights_only=True)["num_iterations"])
    bad = judge_ok(cli("train_sinusoid.py", [*argv, "--logdir", str(run), "--resume"]))
    if bad:
        return bad
    if not _same_params(run, fx.sin_reference(n, extra)):
        return SILENT, f"stopped at {stopped}; the resumed run does not end where an uninterrupted one ends"
    gap = _continuous(run, 5, n)
    if gap:
        return gap
    return CLEAR, f"exit {code} after iteration {stopped}, checkpoint written; resume exact, progress continuous"


@case("sigterm_resume_exact", "kill -15 mid-run: checkpoint, exit 143, --resume ends bit for bit as uninterrupted")
def _sigterm(fx: Fixtures, tmp: Path) -> Outcome:
    return _signal_then_resume(fx, tmp, signal.SIGTERM, 143)


@case("sigint_resume_exact", "Ctrl-C (SIGINT) mid-run: checkpoint, exit 130, --resume exact")
def _sigint(fx: Fixtures, tmp: Path) -> Outcome:
    return _signal_then_resume(fx, tmp, signal.SIGINT, 130)


@case("nav_sigterm", "kill -15 to a nav run: checkpoint written, exit 143, --resume finishes the run")
def _nav_sigterm(fx: Fixtures, tmp: Path) -> Outcome:
    run = tmp / "run"
    argv = [*NAV_TINY, "--iterations", "200", "--checkpoint-interval", "1"]
    got = signal_mid_run("train_nav.py", argv, run, signal.SIGTERM)
    if isinstance(got[0], str):
        return got  # type: ignore[return-value]
    rc, err = got
    if rc != 143 or "checkpoint written" not in err:
        return LOST, f"exit {rc}: {_last_line(err)[:200]}"
    import torch

    stopped = int(torch.load(run / "checkpoint_latest.pt", weights_only=True)["num_iterations"])
    argv[argv.index("200")] = str(stopped + 1)
    bad = judge_ok(cli("train_nav.py", [*argv, "--logdir", str(run), "--resume"]))
    if bad:
        return bad
    done = int(torch.load(run / "checkpoint_final.pt", weights_only=True)["num_iterations"])
    if done != stopped + 1:
        return LOST, f"resumed from {stopped} but ended at {done}"
    return CLEAR, f"exit 143 after iteration {stopped}; resumed to {done}"


@case("truncated_checkpoint_latest", "checkpoint_latest.pt cut in half: named, the previous one used, exact end")
def _truncated_latest(fx: Fixtures, tmp: Path) -> Outcome:
    n = 20
    run = tmp / "run"
    argv = [*SIN_TINY, "--iterations", str(n)]
    bad = judge_ok(cli("train_sinusoid.py", [*argv, "--logdir", str(run)]))
    if bad:
        return bad
    latest = run / "checkpoint_latest.pt"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    os.remove(run / "checkpoint_final.pt")
    proc = cli("train_sinusoid.py", [*argv, "--logdir", str(run), "--resume"])
    bad = judge_ok(proc)
    if bad:
        return LOST if bad[0] == SILENT else bad[0], bad[1]
    if "checkpoint_latest.pt" not in proc.stderr:
        return SILENT, "the damaged checkpoint was not named"
    if not _same_params(run, fx.sin_reference(n)):
        return SILENT, "the resumed run does not end where an uninterrupted one ends"
    gap = _continuous(run, 5, n)
    return gap or (CLEAR, "damaged latest named, previous used, exact end, progress continuous")


@case("all_checkpoints_damaged", "both kept checkpoints damaged: one error naming them", fast=True)
def _all_damaged(fx: Fixtures, tmp: Path) -> Outcome:
    run = tmp / "run"
    shutil.copytree(fx.sin_run(), run)
    for name in ("checkpoint_latest.pt", "checkpoint_previous.pt", "checkpoint_final.pt"):
        p = run / name
        if p.exists():
            p.write_bytes(p.read_bytes()[:-10] + b"0123456789")
    return judge_refusal(cli("train_sinusoid.py", [*SIN_TINY, "--iterations", "10", "--logdir", str(run),
                                                   "--resume"]), "checkpoint_latest.pt")


@case("resume_without_checkpoint", "--resume on an empty folder: one error")
def _resume_empty(fx: Fixtures, tmp: Path) -> Outcome:
    (tmp / "empty").mkdir()
    return judge_refusal(cli("train_sinusoid.py", [*SIN_TINY, "--iterations", "5", "--logdir", str(tmp / "empty"),
                                                   "--resume"]), "empty")


@case("fresh_run_into_used_folder", "a fresh run into a folder holding a run is refused (no overwrite)")
def _fresh_into_used(fx: Fixtures, tmp: Path) -> Outcome:
    return _resume_refused_fresh(fx.sin_run())


def _resume_refused_fresh(run: Path) -> Outcome:
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    out = judge_refusal(cli("train_sinusoid.py", [*SIN_TINY, "--iterations", "5", "--logdir", str(run)]),
                        "--resume")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    if out[0] == CLEAR and after != before:
        return SILENT, "refused, but the run folder changed"
    return out


@case("metatrpo_load_wrong_file", "MetaTRPO.load on a text file, a plain torch file, a MetaTrainer checkpoint",
      fast=True)
def _load_wrong(fx: Fixtures, tmp: Path) -> Outcome:
    import torch

    from rkmeta_rl import MetaTRPO
    from rkmeta_rl.errors import CheckpointError

    (tmp / "text.pt").write_text("hello")
    torch.save({"a": torch.ones(2)}, tmp / "plain.pt")
    for path, needle in ((tmp / "text.pt", "text.pt"), (tmp / "plain.pt", "not an rkmeta_rl checkpoint"),
                         (fx.sin_run() / "checkpoint_final.pt", "MetaTrainer checkpoint")):
        out = judge_raises(lambda p=path: MetaTRPO.load(str(p)), (CheckpointError,), needle)
        if out[0] != CLEAR:
            return out
    return out


@case("metatrpo_load_changed_setting", "MetaTRPO.load(path, step_rule='fixed') on a tableau run is refused")
def _load_changed(fx: Fixtures, tmp: Path) -> Outcome:
    from rkmeta_rl import MetaTRPO
    from rkmeta_rl.errors import ConfigMismatchError

    path = fx.nav_run() / "checkpoint_final.pt"
    return judge_raises(lambda: MetaTRPO.load(str(path), step_rule="fixed"), (ConfigMismatchError,),
                        "step_rule='tableau'", "step_rule='fixed'")


def _load_images(root: Path, cache: Path) -> Any:
    from rkmeta_rl.supervised import omniglot as og

    return og.load_omniglot(root, 14, cache_dir=cache, progress=False)


@case("truncated_npz_cache", "a truncated .npz image cache is rebuilt (same images as a fresh decode)", fast=True)
def _truncated_npz(fx: Fixtures, tmp: Path) -> Outcome:
    root, cache = omniglot_tree(tmp / "d"), tmp / "c"
    first = _load_images(root, cache)
    (npz,) = cache.glob("*.npz")
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    try:
        again = _load_images(root, cache)
    except Exception as err:  # noqa: BLE001
        return TRACE, f"{type(err).__name__}: {str(err)[:200]}"
    if not np.array_equal(first.images, again.images):
        return SILENT, "the rebuilt cache holds other images"
    return CLEAR, "rebuilt"


@case("truncated_png", "a truncated PNG: the error names the file", fast=True)
def _truncated_png(fx: Fixtures, tmp: Path) -> Outcome:
    root = omniglot_tree(tmp / "d")
    png = sorted(root.rglob("*.png"))[1]
    png.write_bytes(png.read_bytes()[:200])
    return judge_raises(lambda: _load_images(root, tmp / "c"), (ValueError, OSError), png.name)


@case("swapped_image_files", "two images swapped in place after caching: the cache is rebuilt, not served stale",
      fast=True)
def _swapped(fx: Fixtures, tmp: Path) -> Outcome:
    root, cache = omniglot_tree(tmp / "d"), tmp / "c"
    first = _load_images(root, cache)
    files = first.index.files()
    a, b = files[0], files[-1]
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    again = _load_images(root, cache)
    if not (np.array_equal(again.images[0], first.images[-1]) and np.array_equal(again.images[-1], first.images[0])):
        return SILENT, "the cache served the images from before the swap"
    return CLEAR, "rebuilt from the swapped files"


@case("eval_tasks_0", "--eval-tasks 0 on sinusoid and few-shot: refused before work")
def _eval0(fx: Fixtures, tmp: Path) -> Outcome:
    out = judge_refusal(cli("train_sinusoid.py", [*SIN_TINY, "--iterations", "5", "--eval-tasks", "0",
                                                  "--logdir", str(tmp / "a")]), "--eval-tasks")
    if out[0] != CLEAR:
        return out
    flags = [*FEW_TINY, "--data-root", str(tmp / "nowhere"), "--iterations", "1", "--logdir", str(tmp / "b")]
    flags[flags.index("--eval-tasks") + 1] = "0"
    out = judge_refusal(cli("train_fewshot.py", flags), "--eval-tasks")
    if out[0] == CLEAR and ((tmp / "a").exists() or (tmp / "b").exists()):
        return SILENT, "refused, but a run folder was made"
    return out


@case("logdir_under_file", "--logdir under a regular file, every trainer")
def _logdir_file(fx: Fixtures, tmp: Path) -> Outcome:
    (tmp / "f").write_text("x")
    bad = str(tmp / "f" / "run")
    for script, argv in (("train_sinusoid.py", SIN_TINY), ("train_nav.py", NAV_TINY),
                         ("train_locomotion.py", LOCO_TINY),
                         ("train_fewshot.py", [*FEW_TINY, "--data-root", str(fx.mini()),
                                               "--cache-dir", str(tmp / "cache")])):
        out = judge_refusal(cli(script, [*argv, "--iterations", "1", "--logdir", bad]), "regular file")
        if out[0] != CLEAR:
            return out[0], f"{script}: {out[1]}"
    return out


@case("cache_dir_under_file", "few-shot --cache-dir under a regular file: refused before decoding")
def _cache_file(fx: Fixtures, tmp: Path) -> Outcome:
    (tmp / "f").write_text("x")
    return judge_refusal(cli("train_fewshot.py", [*FEW_TINY, "--data-root", str(fx.mini()), "--cache-dir",
                                                  str(tmp / "f" / "cache"), "--iterations", "1",
                                                  "--logdir", str(tmp / "run")]), "--cache-dir")


@case("device_tpu", "--device tpu on every trainer")
def _tpu(fx: Fixtures, tmp: Path) -> Outcome:
    for script, argv in (("train_sinusoid.py", SIN_TINY), ("train_nav.py", NAV_TINY),
                         ("train_locomotion.py", LOCO_TINY), ("train_fewshot.py", FEW_TINY)):
        argv = list(argv)
        argv[argv.index("--device") + 1] = "tpu"
        out = judge_refusal(cli(script, [*argv, "--iterations", "1", "--logdir", str(tmp / "run")]), "'tpu'")
        if out[0] == CLEAR and (tmp / "run").exists():
            return SILENT, f"{script}: refused after making the run folder"
        if out[0] != CLEAR:
            return out[0], f"{script}: {out[1]}"
    return out


@case("device_tpu_sinusoid", "--device tpu on the sinusoid trainer")
def _tpu_sin(fx: Fixtures, tmp: Path) -> Outcome:
    argv = list(SIN_TINY)
    argv[argv.index("--device") + 1] = "tpu"
    return judge_refusal(cli("train_sinusoid.py", [*argv, "--logdir", str(tmp / "run")]), "'tpu'")


@case("few_filters_0_and_negative", "few-shot --filters 0 and -1")
def _filters(fx: Fixtures, tmp: Path) -> Outcome:
    for v in ("0", "-1"):
        argv = list(FEW_TINY)
        argv[argv.index("--filters") + 1] = v
        out = judge_refusal(cli("train_fewshot.py", [*argv, "--data-root", str(tmp / "nowhere"),
                                                     "--logdir", str(tmp / "run")]), "filters", v)
        if out[0] != CLEAR:
            return out[0], f"--filters {v}: {out[1]}"
    return out


@case("too_small_omniglot", "an Omniglot tree with too few characters: said in words")
def _small_tree(fx: Fixtures, tmp: Path) -> Outcome:
    root = omniglot_tree(tmp / "tree")
    argv = [a if a != "miniimagenet" else "omniglot" for a in FEW_TINY]
    return judge_refusal(cli("train_fewshot.py", [*argv, "--data-root", str(root), "--cache-dir", str(tmp / "c"),
                                                  "--iterations", "1", "--logdir", str(tmp / "run")]),
                         "characters")


@case("gamma_2", "gamma=2.0 and gae_lambda=1.5: refused by the command and by MetaTRPO")
def _gamma(fx: Fixtures, tmp: Path) -> Outcome:
    from rkmeta_rl import MetaTRPO

    for kw, name in (({"gamma": 2.0}, "gamma"), ({"gae_lambda": 1.5}, "gae_lambda")):
        out = judge_raises(lambda kw=kw: MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", device="cpu", **kw),
                           (ValueError,), name)
        if out[0] != CLEAR:
            return out
    return judge_refusal(cli("train_nav.py", [*NAV_TINY, "--gamma", "2.0", "--logdir", str(tmp / "run")]), "gamma")


@case("discrete_action_family", "a family with a Discrete action space: refused before work (library and CLI)")
def _discrete(fx: Fixtures, tmp: Path) -> Outcome:
    from rkmeta_rl import MetaTRPO
    from rkmeta_rl.envs.protocol import TaskFamilyError

    out = judge_raises(lambda: MetaTRPO("MlpPolicy", "CartPole-v1", device="cpu"), (TaskFamilyError,), "Box")
    if out[0] != CLEAR:
        return out
    return judge_refusal(cli("train_locomotion.py", [*LOCO_TINY, "--env", "CartPole-v1", "--iterations", "1",
                                                     "--logdir", str(tmp / "run")]), "Box")


def _nan_family() -> Any:
    """The library's 2D navigation family with every reward replaced by NaN."""
    import gymnasium as gym

    import rkmeta_rl.envs  # noqa: F401 - registers the families

    class NaNRewards(gym.Wrapper):
        def step(self, action: Any) -> Any:
            obs, _, terminated, truncated, info = self.env.step(action)
            return obs, math.nan, terminated, truncated, info

    return NaNRewards(gym.make("rkmeta/Navigation2D-v0", disable_env_checker=True))


@case("nan_reward_family", "a family returning NaN rewards: the message says NaN", fast=True)
def _nan_family_case(fx: Fixtures, tmp: Path) -> Outcome:
    from rkmeta_rl.envs.protocol import TaskFamilyError, validate_task_family

    return judge_raises(lambda: validate_task_family(_nan_family()), (TaskFamilyError,), "NaN")


@case("library_learn_nan", "MetaTRPO.learn on NaN returns stops with NonFiniteError", fast=True)
def _learn_nan(fx: Fixtures, tmp: Path) -> Outcome:
    from rkmeta_rl import MetaTRPO
    from rkmeta_rl.errors import NonFiniteError

    model = MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", meta_batch_size=2, fast_batch_size=2, horizon=5,
                     device="cpu", policy_kwargs={"hidden_sizes": (8,)})
    real = model.train_iteration

    def poisoned() -> dict[str, float]:
        stats = real()
        stats["rollout/post_return"] = math.nan
        return stats

    model.train_iteration = poisoned  # type: ignore[method-assign]
    out = judge_raises(lambda: model.learn(3), (NonFiniteError,), "rollout/post_return")
    if out[0] == CLEAR and model.num_iterations != 1:
        return SILENT, f"stopped after {model.num_iterations} iterations, not at the first NaN"
    return out


@case("meta_gradient_int_parameter", "meta_gradient with an int parameter names it", fast=True)
def _int_param(fx: Fixtures, tmp: Path) -> Outcome:
    import torch

    from rkmeta_rl.rk.meta_gradient import meta_gradient

    params = {"w": torch.zeros(3), "count": torch.zeros(3, dtype=torch.int64)}

    def loss(p: dict[str, torch.Tensor], d: torch.Tensor) -> torch.Tensor:
        return (p["w"] * d).sum()

    return judge_raises(lambda: meta_gradient(params, loss, loss, torch.ones(2, 3)), (ValueError, TypeError),
                        "'count'")


@case("progress_after_resume", "progress.csv after a resume: one file, continuous, no duplicated iterations")
def _progress(fx: Fixtures, tmp: Path) -> Outcome:
    run = tmp / "run"
    shutil.copytree(fx.sin_run(), run)
    bad = judge_ok(cli("train_sinusoid.py", [*SIN_TINY, "--iterations", "15", "--logdir", str(run), "--resume"]))
    return bad or _continuous(run, 5, 15) or (CLEAR, "5, 10, 15 once each")


@case("progress_after_older_checkpoint", "resume from an older checkpoint: the rows after it are dropped")
def _progress_older(fx: Fixtures, tmp: Path) -> Outcome:
    run = tmp / "run"
    bad = judge_ok(cli("train_sinusoid.py", [*SIN_TINY, "--iterations", "20", "--logdir", str(run)]))
    if bad:
        return bad
    os.remove(run / "checkpoint_latest.pt")
    os.remove(run / "checkpoint_final.pt")
    bad = judge_ok(cli("train_sinusoid.py", [*SIN_TINY, "--iterations", "20", "--logdir", str(run), "--resume"]))
    return bad or _continuous(run, 5, 20) or (CLEAR, "resumed from 15, 5..20 once each")


@case("nav_resume_policy_and_discount", "train_nav.py --resume with changed --hidden-sizes, then --gamma")
def _nav_policy(fx: Fixtures, tmp: Path) -> Outcome:
    argv = [a if a != "8" else "16" for a in NAV_TINY]  # --hidden-sizes 8 -> 16
    out = _resume_refused("train_nav.py", fx.nav_run(), [*argv, "--iterations", "2"], "hidden_sizes")
    if out[0] != CLEAR:
        return out[0], f"--hidden-sizes: {out[1]}"
    return _resume_refused("train_nav.py", fx.nav_run(), [*NAV_TINY, "--iterations", "2", "--gamma", "0.9"],
                           "gamma")


@case("resume_other_trainers_run", "train_nav.py --resume on a sinusoid run folder: one error, folder untouched")
def _other_trainer(fx: Fixtures, tmp: Path) -> Outcome:
    run = tmp / "run"
    shutil.copytree(fx.sin_run(), run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    out = judge_refusal(cli("train_nav.py", [*NAV_TINY, "--iterations", "2", "--logdir", str(run), "--resume"]),
                        "MetaTrainer checkpoint", "not a MetaTRPO one")
    if out[0] == CLEAR and {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} != before:
        return SILENT, "refused, but the run folder changed"
    return out


@case("trainer_load_wrong_kind", "MetaTrainer.load on a MetaTRPO checkpoint says what it got")
def _trainer_load(fx: Fixtures, tmp: Path) -> Outcome:
    from rkmeta_rl.errors import CheckpointError
    from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem
    from rkmeta_rl.supervised.trainer import MetaTrainer

    path = fx.nav_run() / "checkpoint_final.pt"
    return judge_raises(lambda: MetaTrainer.load(str(path), SinusoidProblem()), (CheckpointError,), "MetaTRPO")


@case("few_ways_exceed_classes", "few-shot --ways 10 on a split of 5 classes: refused in words")
def _ways_big(fx: Fixtures, tmp: Path) -> Outcome:
    argv = list(FEW_TINY)
    argv[argv.index("--ways") + 1] = "10"
    return judge_refusal(cli("train_fewshot.py", [*argv, "--data-root", str(fx.mini()), "--cache-dir",
                                                  str(tmp / "c"), "--iterations", "1", "--logdir", str(tmp / "run")]),
                         "10")


@case("few_missing_data_root", "few-shot --data-root that does not exist: named")
def _no_root(fx: Fixtures, tmp: Path) -> Outcome:
    return judge_refusal(cli("train_fewshot.py", [*FEW_TINY, "--data-root", str(tmp / "nowhere"), "--iterations",
                                                  "1", "--logdir", str(tmp / "run")]), "nowhere")


@case("iterations_0", "--iterations 0 and --meta-batch-size 0: refused before work")
def _iter0(fx: Fixtures, tmp: Path) -> Outcome:
    out = judge_refusal(cli("train_sinusoid.py", [*SIN_TINY, "--iterations", "0", "--logdir", str(tmp / "a")]),
                        "iterations")
    if out[0] != CLEAR:
        return out
    argv = list(NAV_TINY)
    argv[argv.index("--meta-batch-size") + 1] = "0"
    return judge_refusal(cli("train_nav.py", [*argv, "--logdir", str(tmp / "b")]), "--meta-batch-size")


@case("meta_gradient_bad_inner_lr", "meta_gradient with inner_lr NaN, 0 or inf names inner_lr", fast=True)
def _bad_lr(fx: Fixtures, tmp: Path) -> Outcome:
    import torch

    from rkmeta_rl.rk.meta_gradient import meta_gradient

    def loss(p: dict[str, torch.Tensor], d: torch.Tensor) -> torch.Tensor:
        return (p["w"] * d).sum()

    for lr in (math.nan, 0.0, math.inf):
        out = judge_raises(lambda lr=lr: meta_gradient({"w": torch.zeros(3)}, loss, loss, torch.ones(2, 3),
                                                       inner_lr=lr), (ValueError,), "inner_lr")
        if out[0] != CLEAR:
            return out
    return out


# ---- driver --------------------------------------------------------------------------------------------------
def run_cases(cases: list[Case], tmp: Path) -> list[tuple[str, str, str, float]]:
    fx = Fixtures(tmp)
    rows = []
    for c in cases:
        start = time.perf_counter()
        where = tmp / c.name
        where.mkdir()
        try:
            kind, detail = c.run(fx, where)
        except Exception as err:  # noqa: BLE001 - a case that crashes is a traceback
            kind, detail = TRACE, f"{type(err).__name__}: {err} ({traceback.format_exc(limit=-1).strip()[-200:]})"
        rows.append((c.name, kind, detail, time.perf_counter() - start))
        print(f"{c.name:34s} {kind:24s} {rows[-1][3]:6.1f}s  {detail}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="comma-separated case names")
    p.add_argument("--fast", action="store_true", help="only the fast subset (what the default tests run)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    if args.list:
        for c in CASES:
            print(f"{c.name:34s} {'fast' if c.fast else '    '}  {c.what}")
        return 0
    cases = [c for c in CASES if c.fast] if args.fast else list(CASES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        known = {c.name for c in CASES}
        unknown = [n for n in names if n not in known]
        if unknown:
            p.error(f"unknown case(s) {unknown}; see --list")
        cases = [c for c in cases if c.name in names]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="fault_sweep_") as tmp:
        rows = run_cases(cases, Path(tmp))
    counts = {k: sum(1 for r in rows if r[1] == k) for k in (CLEAR, SILENT, LOST, TRACE)}
    summary = {"cases": len(rows), CLEAR: counts[CLEAR], SILENT: counts[SILENT], LOST: counts[LOST],
               "tracebacks": counts[TRACE], "failed_cases": [r[0] for r in rows if r[1] != CLEAR]}
    print(json.dumps(summary))
    return 0 if not summary["failed_cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
