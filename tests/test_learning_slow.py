"""Long runs (``pytest -m slow``): the methods actually learn to adapt. Minutes on one CPU core."""

from __future__ import annotations

import os

import pytest
from conftest import load_script

from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem
from rkmeta_rl.supervised.trainer import MetaTrainConfig, MetaTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["midpoint", "ralston"])
def test_sinusoid_learns_to_adapt(method) -> None:
    cfg = MetaTrainConfig(method=method, iterations=4000, eval_interval=0, final_eval_tasks=300, device="cpu",
                          log_interval=1000)
    tr = MetaTrainer(SinusoidProblem(), cfg, logdir=None)
    tr.learn(progress_bar=False)
    mse = tr.final_evaluation()["mse"]["mean"]
    # before adaptation the best single curve has MSE ~3; after 1 and 10 steps a meta-learned init is far better
    assert mse[0] > 2.0
    assert mse[1] < 1.0 and mse[10] < 0.5


@pytest.mark.slow
def test_nav_reference_adaptation_gain(tmp_path) -> None:
    mod = load_script("train_nav")
    m = mod.main(["--method", "midpoint", "--config", "reference", "--iterations", "30", "--no-progress",
                  "--figure-interval", "0", "--logdir", str(tmp_path)])
    # the reference implementation: pre-adaptation about -36, post-adaptation about -15.5 when trained
    assert m["post_return"] > m["pre_return"] + 10
    assert m["post_return"] > -25
