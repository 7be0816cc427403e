"""The fault sweep (``scripts/fault_sweep.py``) as a test: its fast subset in the default suite, every case under
``-m slow``; each must end with a JSON line in which every case is ``clear_error_or_correct``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(ROOT, "scripts", "fault_sweep.py")


def _sweep(*flags: str, timeout: float) -> tuple[dict, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, SWEEP, *flags], capture_output=True, text=True, env=env,
                          timeout=timeout)
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last), proc.stderr + f"\n(exit {proc.returncode})"


def _assert_all_clear(summary: dict, table: str) -> None:
    assert summary["failed_cases"] == [], table
    assert summary["cases"] == summary["clear_error_or_correct"] > 0, table
    assert summary["silent_wrong"] == summary["work_lost"] == summary["tracebacks"] == 0, table


def test_fast_fault_sweep_is_all_clear() -> None:
    summary, table = _sweep("--fast", timeout=300)
    _assert_all_clear(summary, table)
    assert summary["cases"] >= 8


@pytest.mark.slow
def test_full_fault_sweep_is_all_clear() -> None:
    summary, table = _sweep(timeout=1800)
    _assert_all_clear(summary, table)
    assert summary["cases"] >= 30


def test_sweep_lists_and_selects_cases() -> None:
    out = subprocess.run([sys.executable, SWEEP, "--list"], capture_output=True, text=True, check=True).stdout
    names = [line.split()[0] for line in out.strip().splitlines()]
    for required in ("sigterm_resume_exact", "truncated_checkpoint_latest", "nan_reward_family",
                     "meta_gradient_int_parameter", "progress_after_resume", "device_tpu"):
        assert required in names
    summary, table = _sweep("--only", "meta_gradient_int_parameter", timeout=120)
    assert summary["cases"] == 1 and summary["failed_cases"] == [], table
    bad = subprocess.run([sys.executable, SWEEP, "--only", "no_such_case"], capture_output=True, text=True)
    assert bad.returncode == 2 and "no_such_case" in bad.stderr


def test_the_classifier_tells_the_outcomes_apart() -> None:
    fs = load_script("fault_sweep")

    def proc(rc: int, err: str) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], rc, "", err)

    assert fs.judge_refusal(proc(1, "error: gamma must be in (0, 1], got 2.0\n"), "gamma")[0] == fs.CLEAR
    assert fs.judge_refusal(proc(0, ""), "gamma")[0] == fs.SILENT
    assert fs.judge_refusal(proc(1, "Traceback (most recent call last):\n  ...\nIndexError: x\n"))[0] == fs.TRACE
    assert fs.judge_refusal(proc(1, "error: something is wrong\n"), "gamma")[0] == fs.TRACE  # setting not named
    assert fs.judge_raises(lambda: None, (ValueError,))[0] == fs.SILENT
    assert fs.judge_raises(lambda: {}[105], (ValueError,))[0] == fs.TRACE  # KeyError: 105
    assert fs.judge_raises(lambda: int("x"), (ValueError,), "'x'")[0] == fs.CLEAR
