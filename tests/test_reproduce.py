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
            "--results", os.path.join(out, "results"), "--no-progress",
            "--miniimagenet-root", os.path.join(out, "no-such-folder")]
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
    os.remove(os.path.join(run, "metrics.json"))  # as if killed after its last checkpoint ...
    os.remove(os.path.join(out, "results", "smoke", "table2", "fixed", "ralston-s0.json"))  # ... before its record
    log = os.path.join(out, "runs", "smoke", "logs", "table2-fixed-ralston-s0.log")
    size = os.path.getsize(log)
    summary = _main()(["--scale", "smoke", "--only", "table2", "--out", os.path.join(out, "runs"),
                       "--report", os.path.join(out, "report2.md"), "--results", os.path.join(out, "results"),
                       "--no-progress"])
    assert summary["errors"] == [] and summary["finished_runs"] == 10
    after = json.loads(_read(os.path.join(run, "metrics.json")))
    assert after["iterations"] == before["iterations"]
    assert after["mse_per_step"] == pytest.approx(before["mse_per_step"], rel=1e-6)
    new_log = _read(log)[size:]
    assert "--resume" in new_log  # the interrupted run was resumed ...
    other = os.path.join(out, "runs", "smoke", "logs", "table2-fixed-midpoint-s0.log")
    assert _read(other).count("# 20") == 1  # ... and no finished run started again


def test_a_folder_made_by_another_configuration_is_set_aside_and_trained_again(smoke: tuple[str, dict]) -> None:
    """A finished run folder whose command was another (here: more iterations than the study now asks) is not
    this run's: no record is made from it, it is kept beside under a new name, and the run is trained afresh."""
    out, _ = smoke
    run = os.path.join(out, "runs", "smoke", "table2-tableau", "heun-s0")
    cfg_path = os.path.join(run, "config.json")
    cfg = json.loads(_read(cfg_path))
    i = cfg["argv"].index("--iterations")
    cfg["argv"][i + 1] = str(int(cfg["argv"][i + 1]) + 5)
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh)
    record = os.path.join(out, "results", "smoke", "table2", "tableau", "heun-s0.json")
    os.remove(record)
    summary = _main()(["--scale", "smoke", "--only", "table2", "--out", os.path.join(out, "runs"),
                       "--report", os.path.join(out, "report3.md"), "--results", os.path.join(out, "results"),
                       "--no-progress"])
    assert summary["errors"] == [] and summary["finished_runs"] == 10
    assert os.path.isfile(os.path.join(f"{run}.other-config-0", "metrics.json"))  # kept, under a new name
    fresh = json.loads(_read(cfg_path))["argv"]
    assert "--resume" not in fresh and fresh[fresh.index("--iterations") + 1] == str(int(cfg["argv"][i + 1]) - 5)
    rec = json.loads(_read(record))
    assert rec["command"][rec["command"].index("--iterations") + 1] == fresh[fresh.index("--iterations") + 1]


def test_run_folders_count_only_for_the_command_that_made_them(tmp_path) -> None:
    from rkmeta_rl.common.run_record import finished_metrics, folder_matches

    cmd = ["train_fewshot.py", "--seed", "0", "--iterations", "3", "--data-root", "$RKMETA_OMNIGLOT"]
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    assert folder_matches(str(folder), cmd)  # no config.json: a folder written by hand counts
    launched = ["/x/scripts/train_fewshot.py", "--seed", "0", "--iterations", "3", "--data-root", "/data/omniglot",
                "--logdir", str(folder), "--device", "cpu", "--resume"]
    (folder / "config.json").write_text(json.dumps({"argv": launched}))
    assert folder_matches(str(folder), cmd)  # place, dataset location, device and resume do not count
    rec = str(tmp_path / "rec.json")
    assert finished_metrics(str(folder), rec, cmd) == {"accuracy": 0.5} and os.path.isfile(rec)
    other = [a if a != "3" else "4" for a in cmd]
    assert not folder_matches(str(folder), other)
    assert finished_metrics(str(folder), str(tmp_path / "rec2.json"), other) is None
    assert not os.path.exists(tmp_path / "rec2.json")


def test_bad_flags_fail_before_any_work(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        _main()(["--only", "table9", "--out", str(tmp_path)])
    assert "--only" in capsys.readouterr().err
    assert not os.listdir(tmp_path)



def _table_rows(report: str, first: tuple[str, ...]) -> list[str]:
    """The rows starting with ``first``, without their command cell (its --logdir is where runs were)."""
    return [ln.split("`")[0] for ln in report.splitlines() if ln.startswith(first)]


def test_the_report_is_rebuilt_from_the_records_alone(smoke: tuple[str, dict], tmp_path) -> None:
    """Run folders gone (another machine): every finished run still counts, and the report's numbers are the same."""
    import shutil

    out, summary = smoke
    results = os.path.join(out, "results", "smoke")
    rec = json.loads(_read(os.path.join(results, "table2", "fixed", "midpoint-s0.json")))
    assert rec["command"][0] == "train_sinusoid.py" and "--logdir" not in rec["command"]
    assert rec["metrics"]["mse_per_step"] and rec["shown"].startswith("python scripts/train_sinusoid.py")
    copy = str(tmp_path / "results")
    shutil.copytree(os.path.join(out, "results"), copy)
    argv = ["--scale", "smoke", "--out", str(tmp_path / "no-runs"), "--results", copy, "--no-progress",
            "--miniimagenet-root", str(tmp_path / "none")]
    if os.path.isdir(OMNIGLOT_ROOT):
        argv += ["--omniglot-root", OMNIGLOT_ROOT]
    again = _main()([*argv, "--report", str(tmp_path / "again.md"), "--report-only"])
    assert again["finished_runs"] == summary["finished_runs"]
    before, after = _read(os.path.join(out, "report.md")), _read(str(tmp_path / "again.md"))
    for first in (("| tableau |", "| fixed |"), ("| euler |", "| midpoint |", "| random init |"),
                  ("| omniglot 5-way 1-shot |",)):
        assert _table_rows(after, first) == _table_rows(before, first)
    assert not os.path.exists(tmp_path / "no-runs" / "smoke" / "table2-fixed")  # nothing was trained again
    # a record made by another configuration is not this run's: that run is not finished
    path = os.path.join(copy, "smoke", "table2", "tableau", "heun-s0.json")
    rec = json.loads(_read(path))
    rec["command"] = [a if a != "heun" else "itb" for a in rec["command"]]
    with open(path, "w") as fh:
        json.dump(rec, fh)
    third = _main()([*argv, "--only", "table2", "--report", str(tmp_path / "third.md"), "--report-only"])
    assert third["finished_runs"] == 9
    assert "| tableau | heun | 0.19 | not run yet |" in _read(str(tmp_path / "third.md"))


def test_archived_table2_rows_fill_rows_without_runs(tmp_path) -> None:
    """A Table 2 row with no run takes its archived numbers, marked as such, with their source."""
    folder = tmp_path / "results" / "smoke" / "table2"
    folder.mkdir(parents=True)
    row = {"rule": "fixed", "method": "heun", "mse_1": 0.328, "mse_1_half": 0.03, "mse_1_diverged_seeds": 0,
           "mse_10": None, "mse_10_half": None, "mse_10_diverged_seeds": 2, "mse_10_median": 0.0427, "seeds": 3,
           "iterations": 100000, "seconds": 909.7}
    (folder / "archived_rows.json").write_text(json.dumps({"source": "an earlier report", "rows": [row]}))
    summary = _main()(["--scale", "smoke", "--only", "table2", "--out", str(tmp_path / "runs"), "--results",
                       str(tmp_path / "results"), "--report", str(tmp_path / "r.md"), "--report-only"])
    assert summary["finished_runs"] == 0
    report = _read(str(tmp_path / "r.md"))
    assert ("| fixed | heun | 0.19 | 0.328 ± 0.030 | diverges (2/3 seeds diverge) | 0.0427 | 3 (archived) | 100000 "
            "| 909.7 |") in report
    assert "an earlier report" in report and "| fixed | ralston | 0.12 | not run yet |" in report


def test_a_smoke_run_leaves_the_committed_report_and_records_alone(tmp_path) -> None:
    ns = runpy.run_path(SCRIPT, run_name="reproduce")
    smoke = ns["parse_args"](["--scale", "smoke", "--out", str(tmp_path)])
    assert smoke.report == os.path.join(str(tmp_path), "smoke", "reproduction.md")
    assert smoke.results == os.path.join(str(tmp_path), "smoke", "records")
    cpu = ns["parse_args"](["--scale", "cpu", "--out", str(tmp_path)])
    assert cpu.report == os.path.join("docs", "reproduction.md") and cpu.results == os.path.join(
        ns["REPO"], "results", "reproduce")
