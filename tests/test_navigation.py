"""2D navigation: the Gymnasium env passes the checker, and the batched torch twin equals it step for step."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import rkmeta_rl.envs
from rkmeta_rl.envs import NAVIGATION_ID, Navigation2D, NavigationTwin


def test_registered_and_check_env() -> None:
    import importlib

    importlib.reload(rkmeta_rl.envs)  # registering twice is a no-op
    env = gym.make(NAVIGATION_ID)
    assert env.spec is not None and env.spec.max_episode_steps == 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test ...
        # ... except the unbounded position (the reference's observation space; bounded only by the horizon)
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value is")
        check_env(env.unwrapped)


def test_reference_semantics() -> None:
    env = Navigation2D(task={"goal": np.array([0.05, -0.2], np.float32)})
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    obs, r, term, trunc, _ = env.step(np.array([3.0, -0.05], np.float32))  # x clipped to 0.1
    np.testing.assert_allclose(obs, [0.1, -0.05], rtol=0, atol=1e-7)
    assert r == pytest.approx(-np.hypot(0.05, 0.15), abs=1e-6)  # distance after the move
    assert not term and not trunc
    # protocol
    tasks = env.sample_tasks(5, np.random.default_rng(1))
    assert len(tasks) == 5 and all(t["goal"].shape == (2,) and np.all(np.abs(t["goal"]) <= 0.5) for t in tasks)
    env.reset(options={"task": tasks[3]})
    np.testing.assert_array_equal(env.get_task()["goal"], tasks[3]["goal"])
    env.set_task(tasks[1])
    np.testing.assert_array_equal(env.get_task()["goal"], tasks[1]["goal"])


def test_twin_equals_env_step_for_step() -> None:
    rng = np.random.default_rng(0)
    num_tasks, num_traj = 4, 3
    # goals on the 0.05-grid: the "homing" copies below reach them exactly and terminate early
    tasks = [{"goal": np.array(g, np.float32)} for g in ([0.3, -0.2], [-0.45, 0.1], [0.0, 0.25], [0.4, 0.4])]
    envs = [[gym.make(NAVIGATION_ID) for _ in range(num_traj)] for _ in range(num_tasks)]
    twin = NavigationTwin.from_tasks(tasks, num_traj)
    obs_t = twin.reset()
    for i in range(num_tasks):
        for j in range(num_traj):
            o, _ = envs[i][j].reset(seed=i * 10 + j, options={"task": tasks[i]})
            np.testing.assert_array_equal(o, obs_t[i, j].numpy())
    alive = np.ones((num_tasks, num_traj), bool)
    n_term = n_trunc = 0
    for t in range(100):
        acts = rng.normal(0.0, 0.2, size=(num_tasks, num_traj, 2)).astype(np.float32) * 3.0
        # trajectory 0 of each task heads for the goal (early termination); others wander (truncation)
        for i in range(num_tasks):
            pos = twin.state[i, 0].numpy()
            acts[i, 0] = (tasks[i]["goal"] - pos) * (1.0 if t > 3 else 0.5) + (0.3 if t == 0 else 0.0)
        obs_t, rew_t, term_t, trunc_t = twin.step(torch.from_numpy(acts))
        for i in range(num_tasks):
            for j in range(num_traj):
                if not alive[i, j]:
                    assert rew_t[i, j].item() == 0.0  # ended copies give zero reward, keep state
                    continue
                o, r, term, trunc, _ = envs[i][j].step(acts[i, j])
                np.testing.assert_array_equal(o, obs_t[i, j].numpy())
                assert np.float32(r) == rew_t[i, j].item()
                assert term == bool(term_t[i, j]) and trunc == bool(trunc_t[i, j])
                if term or trunc:
                    alive[i, j] = False
                    n_term += term
                    n_trunc += trunc
        np.testing.assert_array_equal(alive, twin.alive.numpy())
    assert not alive.any()
    assert n_term >= num_tasks and n_trunc >= 1  # both ways of ending were exercised


def test_twin_dtype_and_validation() -> None:
    twin = NavigationTwin(torch.zeros(2, 2), num_traj=5, horizon=3)
    o = twin.reset()
    assert o.shape == (2, 5, 2) and o.dtype == torch.float32
    for _ in range(3):
        o, r, te, tr = twin.step(torch.full((2, 5, 2), 0.5, dtype=torch.float64))
    assert tr.all() and not te.any() and not twin.alive.any()
    with pytest.raises(ValueError):
        NavigationTwin(torch.zeros(3), num_traj=1)
