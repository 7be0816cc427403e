"""MetaTRPO: a two-iteration learn() that logs to TensorBoard, save/load, adapt and predict."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch

from rkmeta_rl import MetaTRPO

SMALL = dict(meta_batch_size=3, fast_batch_size=4, policy_kwargs={"hidden_sizes": (16, 16)})


def test_learn_logs_to_tensorboard(tmp_path: str) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = MetaTRPO("MlpPolicy", "rkmeta/Navigation2D-v0", method="ralston", tensorboard_log=str(tmp_path),
                     seed=1, **SMALL)
    seen: list[dict[str, float]] = []
    model.learn(2, callback=lambda m, s: seen.append(s))
    assert model.num_iterations == 2 and len(seen) == 2 and model.num_timesteps > 0
    files = glob.glob(os.path.join(str(tmp_path), "MetaTRPO_1", "events.out.tfevents.*"))
    assert files
    acc = EventAccumulator(files[0])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for key in ("rollout/pre_return", "rollout/post_return", "train/kl", "train/surrogate_improvement",
                "train/ls_steps", "train/cg_residual", "time/iterations", "time/total_env_steps"):
        assert key in tags, (key, tags)
    assert [e.step for e in acc.Scalars("rollout/pre_return")] == [1, 2]


def test_callback_stops_and_euler_has_no_post(tmp_path: str) -> None:
    model = MetaTRPO(env="rkmeta/Navigation2D-v0", method="euler", **SMALL)
    model.learn(5, callback=lambda m, s: False)
    assert model.num_iterations == 1


def test_save_load_round_trip(tmp_path: str) -> None:
    model = MetaTRPO(env="rkmeta/Navigation2D-v0", method="midpoint", inner_lr=0.1, seed=3, **SMALL)
    model.learn(1)
    path = os.path.join(str(tmp_path), "model.pt")
    model.save(path)
    loaded = MetaTRPO.load(path)
    assert loaded.tableau.name == "midpoint" and loaded.inner_lr == 0.1 and loaded.num_iterations == 1
    assert loaded.meta_batch_size == 3 and loaded.policy.hidden_sizes == (16, 16)
    for k, v in model.policy.params().items():
        assert torch.equal(v, loaded.policy.params()[k])
    obs = np.array([[0.1, -0.2], [0.0, 0.3]], np.float32)
    np.testing.assert_array_equal(model.predict(obs)[0], loaded.predict(obs)[0])


def test_adapt_and_predict() -> None:
    model = MetaTRPO(env="rkmeta/Navigation2D-v0", method="heun", **SMALL)
    task = {"goal": np.array([0.3, 0.3], np.float32)}
    p0 = model.adapt(task, num_steps=0)
    p2 = model.adapt(task, num_steps=2)
    assert set(p2) == set(p0) and all(p2[k].shape == p0[k].shape for k in p0)
    assert any(not torch.equal(p0[k], p2[k]) for k in p0)
    a, state = model.predict(np.zeros(2, np.float32), params=p2)
    assert a.shape == (2,) and state is None and np.all(np.abs(a) <= 0.1 + 1e-7)
    assert model.alpha == pytest.approx(2 * 1.0 * 0.16)  # heun: q21 = 1, h = 2 * inner_lr


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MetaTRPO("CnnPolicy")
    with pytest.raises(ValueError):
        MetaTRPO(method="rk4", **SMALL)
