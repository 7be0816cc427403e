"""``scripts/reproduce.py --scale smoke``: every experiment end to end, the report, skipping and resuming runs."""

from __future__ import annotations

import json
import os
import runpy

import pytest
from conftest import OMNIGLOT_ROOT

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "reproduce.py")


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _main():
    return runpy.run_path(SCRIPT, run_name="reproduce")["main"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("repro"))
    argv = ["--scale", "smoke", "--out", os.path.join(out, "runs"), "--report", os.path.join(out, "report.md"),
            "--no-progress", "--miniimagenet-root", os.path.join(out, "no-such-folder")]
    if os.path.isdir(OMNIGLOT_ROOT):
        argv += ["--omniglot-root", OMNIGLOT_ROOT]
    summary = _main()(argv)
    return out, summary


def test_smoke_runs_everything_and_writes_the_report(smoke: tuple[str, dict]) -> None:
    out, summary = smoke
    assert summary["errors"] == []
    assert summary["finished_runs"] == summary["planned_runs"] > 0
    report = _read(os.path.join(out, "report.md"))
    for heading in ("## Table 2", "## Table 3", "## Figure 3", "## Figure 5"):
        assert heading in report
    # every Table 2 row (2 step rules x 5 methods) has a measured number, not a placeholder
    rows = [ln for ln in report.splitlines() if ln.startswith("| tableau |") or ln.startswith("| fixed |")]
    table2 = [ln for ln in rows if ln.count("|") == 10]
    assert len(table2) == 10 and not any("not run yet" in ln for ln in table2)
    assert "| random init |" in report and "| oracle |" in report
    assert report.count("data not present") == 4  # MiniImagenet 1- and 5-shot x 2 methods
    assert os.path.isfile(os.path.join(out, "reproduction_table2.png"))
    assert os.path.isfile(os.path.join(out, "reproduction_figure5.png"))
    if os.path.isdir(OMNIGLOT_ROOT):
        assert "| omniglot 5-way 1-shot | midpoint |" in report
        assert os.path.isfile(os.path.join(out, "reproduction_figure3.png"))
        # the commands name the dataset by its variable, never by this machine's folder
        assert OMNIGLOT_ROOT not in report and '--data-root "$RKMETA_OMNIGLOT"' in report


def test_finished_runs_are_skipped_and_interrupted_runs_resume(smoke: tuple[str, dict]) -> None:
    out, _ = smoke
    run = os.path.join(out, "runs", "smoke", "table2-fixed", "ralston-s0")
    before = json.loads(_read(os.path.join(run, "metrics.json")))
    os.remove(os.path.join(run, "metrics.json"))  # as if killed after its last checkpoint
    log = os.path.join(out, "runs", "smoke", "logs", "table2-fixed-ralston-s0.log")
    size = os.path.getsize(log)
    summary = _main()(["--scale", "smoke", "--only", "table2", "--out", os.path.join(out, "runs"),
                       "--report", os.path.join(out, "report2.md"), "--no-progress"])
    assert summary["errors"] == [] and summary["finished_runs"] == 10
    after = json.loads(_read(os.path.join(run, "metrics.json")))
    assert after["iterations"] == before["iterations"]
    assert after["mse_per_step"] == pytest.approx(before["mse_per_step"], rel=1e-6)
    new_log = _read(log)[size:]
    assert "--resume" in new_log  # the interrupted run was resumed ...
    other = os.path.join(out, "runs", "smoke", "logs", "table2-fixed-midpoint-s0.log")
    assert _read(other).count("# 20") == 1  # ... and no finished run started again


def test_bad_flags_fail_before_any_work(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        _main()(["--only", "table9", "--out", str(tmp_path)])
    assert "--only" in capsys.readouterr().err
    assert not os.listdir(tmp_path)

