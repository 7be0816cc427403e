"""The default torch thread count of training commands (``rkmeta_rl.utils.default_threads``)."""

from __future__ import annotations

import pytest

from rkmeta_rl import utils
from rkmeta_rl.cli.flags import FIELD_HELP


@pytest.fixture
def cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that may run on 8 of the machine's 8 cores, on an idle machine."""
    monkeypatch.setattr(utils.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(utils.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(utils.os, "getloadavg", lambda: (0.2, 0.2, 0.2), raising=False)


def test_available_cores_is_the_affinity_mask(cores: None) -> None:
    assert utils.available_cores() == 8


def test_one_process_uses_the_cores_it_has(cores: None) -> None:
    assert utils.default_threads({}) == 8
    assert utils.default_threads({"WORLD_SIZE": "1"}) == 8


def test_cores_other_jobs_keep_busy_are_left_to_them(cores: None) -> None:
    assert utils.default_threads({}, load=0.4) == 8
    assert utils.default_threads({}, load=2.6) == 5  # round(8 - 2.6)
    assert utils.default_threads({}, load=7.7) == 1
    assert utils.default_threads({}, load=30.0) == 1  # never 0
    assert utils.default_threads({}, load=None) == 8  # no load average: every core
    assert utils.default_threads({}) == 8  # "now": reads the (patched) load average, 0.2


def test_an_affinity_mask_bounds_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(utils.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(utils.os, "cpu_count", lambda: 16)
    assert utils.default_threads({}, load=3.0) == 2  # 13 idle on the machine, 2 allowed to this process
    assert utils.default_threads({}, load=15.0) == 1


def test_omp_num_threads_wins(cores: None) -> None:
    assert utils.default_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert utils.default_threads({"OMP_NUM_THREADS": "3", "WORLD_SIZE": "4"}) == 3
    # not a positive integer: ignored, as torch ignores it
    assert utils.default_threads({"OMP_NUM_THREADS": "0"}) == 8
    assert utils.default_threads({"OMP_NUM_THREADS": "many"}) == 8


def test_torchrun_processes_share_the_cores(cores: None) -> None:
    assert utils.default_threads({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "8"}) == 1
    assert utils.default_threads({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "16"}) == 1  # never 0
    assert utils.default_threads({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}) == 4  # two nodes of two
    assert utils.default_threads({"WORLD_SIZE": "3"}) == 2  # no LOCAL_WORLD_SIZE: all on this node


def test_no_affinity_falls_back_to_the_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(utils.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(utils.os, "cpu_count", lambda: 6)
    assert utils.default_threads({}, load=None) == 6
    monkeypatch.delattr(utils.os, "getloadavg", raising=False)
    assert utils.default_threads({}) == 6


def test_the_flag_says_the_default() -> None:
    assert "every core this process may use" in FIELD_HELP["threads"]
    assert "OMP_NUM_THREADS" in FIELD_HELP["threads"]


@pytest.mark.parametrize("threads,expected", [(None, 3), (2, 2)])
def test_commands_use_the_default_unless_told(monkeypatch: pytest.MonkeyPatch, tmp_path, threads: int | None,
                                              expected: int) -> None:
    """The one flow of every command sets ``--threads`` when given, else :func:`utils.default_threads`."""
    import argparse

    from rkmeta_rl.cli import runner
    from rkmeta_rl.supervised.config import MetaTrainConfig

    seen: list[int] = []
    monkeypatch.setattr(runner, "default_threads", lambda: 3)
    monkeypatch.setattr(runner, "set_threads", seen.append)
    parser = argparse.ArgumentParser()
    runner.add_run_flags(parser)

    def build(*_: object) -> None:
        raise ValueError("stop here")

    cmd = runner.Command(parser=parser, config=lambda a: MetaTrainConfig(threads=threads, device="cpu"),
                         logdir=lambda a, c: str(tmp_path), build=build, finish=lambda a, m: {})
    with pytest.raises(SystemExit, match="stop here"):
        runner.run_command(cmd, [])
    assert seen == [expected]
