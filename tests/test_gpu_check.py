"""``scripts/gpu_check.py`` on a machine without CUDA: one clear line, the JSON ``{"cuda": false, ...}`` last,
exit status 0, and one-line errors for bad flags (the command line itself is run by
``tests/test_distributed_rl.py::test_gpu_check_exits_zero_without_gpu``)."""

from __future__ import annotations

import importlib.util
import json
import os
from types import ModuleType

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.py")


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_without_cuda_says_so_and_prints_the_json(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load().main(["--max-seconds", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "no CUDA device" in lines[0]
    out = json.loads(lines[-1])
    assert out["cuda"] is False and out["torch"] == torch.__version__


@pytest.mark.parametrize("flags,msg", [(["--max-seconds", "0"], "--max-seconds must be > 0, got 0.0"),
                                       (["--iters", "-1"], "--iters must be > 0, got -1"),
                                       (["--warmup", "-2"], "--warmup must be >= 0, got -2"),
                                       (["--sections", "gpu"], "invalid choice: 'gpu'")])
def test_bad_flags_are_one_line_errors(flags: list[str], msg: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load().parse_args(flags)
    assert exc.value.code == 2 and msg in capsys.readouterr().err


def test_the_budget_keeps_one_timed_iteration_and_stops() -> None:
    mod = load()
    calls: list[int] = []
    budget = mod.Budget(0.0)
    row = mod.time_steps(lambda: calls.append(1), "cpu", warmup=1, iters=10, budget=budget)
    assert row["iters"] == 1 and len(calls) == 2 and budget.hit
