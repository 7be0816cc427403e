"""``scripts/bench_nav.py`` end to end: its JSON line and its hardware-normalised figure for both settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(*flags: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_nav.py"), "--iters", "1",
                          "--warmup", "0", *flags], capture_output=True, text=True, env=env, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check(res: dict, width: int, tasks: int) -> None:
    pass_s = res[f"seconds_per_{width}x{width}_pass_over_d0_d1"]
    assert res["seconds_per_iteration"] > 0 and pass_s > 0
    # the normalised figure is the iteration over the pass (rounded in the output)
    assert res["passes_equivalent"] == pytest.approx(res["seconds_per_iteration"] / pass_s, rel=0.02)
    assert res["sample_seconds"] + res["update_seconds"] <= res["seconds_per_iteration"] * 1.01
    # every task's D0 and D1: 20 trajectories of at most 100 steps each
    assert 0 < res["env_steps_per_iteration"] <= 2 * tasks * 20 * 100


def test_bench_nav_reference_setting() -> None:
    res = _bench("--reference-seconds", "4.0")
    assert res["config"] == "reference" and res["method"] == "midpoint"
    assert "64x64 tanh" in res["setting"]
    # a reference time is the user's input, never a number of the script's own
    assert res["reference_seconds_per_iteration_given"] == 4.0
    assert res["speedup_vs_reference"] == pytest.approx(4.0 / res["seconds_per_iteration"], rel=0.02)
    _check(res, 64, 20)


@pytest.mark.slow
def test_bench_nav_main_command_setting() -> None:
    res = _bench("--config", "seed", "--method", "ralston")
    assert res["config"] == "seed" and res["method"] == "ralston"
    assert "100x100 relu" in res["setting"] and "speedup_vs_reference" not in res
    _check(res, 100, 40)
