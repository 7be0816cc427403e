"""``scripts/train_nav.py``: metrics, TensorBoard content, exact resume, bad flags."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import load_script

from rkmeta_rl.logger import read_scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


train_nav = load_script("train_nav")
TINY = ["--config", "reference", "--meta-batch-size", "3", "--fast-batch-size", "4", "--no-progress",
        "--checkpoint-interval", "1"]


def _params(logdir: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(logdir, "checkpoint_final.pt"), weights_only=True)["params"]


def test_metrics_and_tensorboard(tmp_path) -> None:
    m = train_nav.main([*TINY, "--method", "heun", "--iterations", "3", "--figure-interval", "2",
                        "--logdir", str(tmp_path)])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("method", "iterations", "pre_return", "post_return", "seconds"):
        assert key in on_disk
    assert on_disk["iterations"] == 3 and m["method"] == "heun" and m["adapt_lr"] == pytest.approx(0.2)
    scalars = read_scalars(str(tmp_path))
    for key in ("rollout/pre_return", "rollout/post_return", "train/kl", "train/surrogate_improvement",
                "train/ls_steps", "train/cg_residual", "time/total_env_steps", "time/iteration_seconds"):
        assert [s for s, _ in scalars[key]] == [1, 2, 3], key
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Images("rollout/trajectories")] == [1, 2]


def test_resume_is_exact(tmp_path) -> None:
    train_nav.main([*TINY, "--method", "ralston", "--iterations", "4", "--logdir", str(tmp_path / "ref")])
    train_nav.main([*TINY, "--method", "ralston", "--iterations", "2", "--logdir", str(tmp_path / "b")])
    m = train_nav.main([*TINY, "--method", "ralston", "--iterations", "4", "--logdir", str(tmp_path / "b"),
                        "--resume"])
    ref, got = _params(str(tmp_path / "ref")), _params(str(tmp_path / "b"))
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert m["iterations"] == 4 and len(m["history"]["pre_return"]) == 4
    ref_m = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert ref_m["history"]["post_return"] == m["history"]["post_return"]


@pytest.mark.parametrize("flags,msg", [
    (["--method", "rk4"], "one- and two-stage"), (["--method", "nope"], "unknown RK method"),
    (["--inner-lr", "-1"], "--inner-lr must"), (["--meta-batch-size", "0"], "--meta-batch-size must"),
    (["--fvp-subsample", "0"], "--fvp-subsample must"),
])
def test_bad_flags(tmp_path, flags, msg, capsys) -> None:
    with pytest.raises(SystemExit) as err:
        train_nav.main([*TINY, *flags, "--logdir", str(tmp_path)])
    assert msg in str(err.value)
    assert not os.path.exists(tmp_path / "progress.csv")


def test_eval_nav_writes_curve_csv_and_plot(tmp_path) -> None:
    eval_nav = load_script("eval_nav")
    run = tmp_path / "run"
    train_nav.main([*TINY, "--method", "midpoint", "--iterations", "1", "--figure-interval", "0",
                    "--logdir", str(run)])
    res = eval_nav.main([str(run), "--tasks", "3", "--steps", "2", "--traj", "3", "--out", str(tmp_path / "ev")])
    assert set(res["curves"]) == {"midpoint", "random init"} and len(res["curves"]["midpoint"]) == 3
    rows = (tmp_path / "ev" / "eval_nav.csv").read_text().strip().splitlines()
    assert rows[0].startswith("policy,return_after_0_steps") and rows[-1].startswith("oracle")
    assert os.path.getsize(tmp_path / "ev" / "eval_nav.png") > 1000
    # the oracle is the exact optimum: better than anything the policies achieve
    assert res["oracle"] > max(max(c) for c in res["curves"].values())


def test_oracle_is_exact_for_a_known_goal() -> None:
    from rkmeta_rl.rl.evaluation import oracle_returns

    # goal (0.25, 0): positions 0.1, 0.2, 0.25 -> distances 0.15, 0.05, 0 (terminates)
    got = oracle_returns("rkmeta/Navigation2D-v0", [{"goal": [0.25, 0.0]}])
    assert got[0] == pytest.approx(-0.2, abs=1e-6)
