"""Samplers: the twin sampler's episodes equal a replay through the Gymnasium env; generic sampler interface."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

import rkmeta_rl.envs  # noqa: F401
from rkmeta_rl.rl import GaussianMLPPolicy, GymSampler, TwinSampler, make_sampler


def _setup() -> tuple[gym.Env, GaussianMLPPolicy, list]:
    env = gym.make("rkmeta/Navigation2D-v0")
    pol = GaussianMLPPolicy(2, 2, (8,), init_log_std=-1.0, generator=torch.Generator().manual_seed(0))
    tasks = env.unwrapped.sample_tasks(3, np.random.default_rng(0))
    tasks[0] = {"goal": np.array([0.0, 0.0], np.float32)}  # near the start: some episodes terminate early
    return env, pol, tasks


def test_twin_sampler_replays_through_env() -> None:
    env, pol, tasks = _setup()
    sampler = make_sampler("rkmeta/Navigation2D-v0", pol)
    assert isinstance(sampler, TwinSampler) and sampler.horizon == 100
    # per-task parameters: task i's copy shifted, so a mix-up would show
    pt = {k: torch.stack([v.detach() + 0.05 * i for i in range(3)]) for k, v in pol.params().items()}
    eps = sampler.sample(tasks, pt, 4, torch.Generator().manual_seed(1))
    assert eps.obs.shape == (3, 100, 4, 2) and eps.masks.shape == (3, 100, 4)
    # masks: 1 up to and including the ending step, then 0
    m = eps.masks
    assert m.sum(1).min() < 100  # an early termination is part of the replay
    assert torch.all(m[:, 1:] <= m[:, :-1])
    for i in range(3):
        p_i = {k: v[i] for k, v in pt.items()}
        torch.testing.assert_close(eps.log_probs[i] * m[i], pol.log_prob(p_i, eps.obs[i], eps.actions[i]) * m[i])
        for b in range(4):
            e = gym.make("rkmeta/Navigation2D-v0")
            o, _ = e.reset(options={"task": tasks[i]})
            for t in range(100):
                if m[i, t, b] == 0:
                    break
                np.testing.assert_array_equal(o, eps.obs[i, t, b].numpy())
                o, r, term, trunc, _ = e.step(eps.actions[i, t, b].numpy())
                assert np.float32(r) == eps.rewards[i, t, b].item()
                if term or trunc:
                    assert t + 1 == 100 or m[i, t + 1, b] == 0
                    break
    # deterministic under a seeded generator
    eps2 = sampler.sample(tasks, pt, 4, torch.Generator().manual_seed(1))
    assert torch.equal(eps.actions, eps2.actions)


def test_generic_sampler_same_interface() -> None:
    env, pol, tasks = _setup()
    gs = GymSampler("rkmeta/Navigation2D-v0", pol, horizon=30)
    assert gs.horizon == 30
    tasks2 = gs.sample_tasks(2, np.random.default_rng(0))
    assert len(tasks2) == 2
    eps = gs.sample(tasks, pol.params(), 3, torch.Generator().manual_seed(0))
    assert eps.obs.shape == (3, 30, 3, 2) and eps.rewards.dtype == torch.float32
    assert eps.masks.sum(1).min() < 30 and eps.masks.sum(1).max() == 30
    m = eps.masks
    torch.testing.assert_close(eps.log_probs * m, pol.log_prob(pol.params(), eps.obs, eps.actions) * m)
    # rewards follow the observations: reward of step t is -distance of obs t+1 to the goal
    for i in range(3):
        g = torch.as_tensor(tasks[i]["goal"])
        for b in range(3):
            n = int(m[i, :, b].sum())
            if n > 1:
                d = -(eps.obs[i, 1:n, b] - g).norm(dim=-1)
                torch.testing.assert_close(eps.rewards[i, :n - 1, b], d, rtol=1e-5, atol=1e-6)
    assert isinstance(make_sampler("rkmeta/Navigation2D-v0", pol, use_twin=False), GymSampler)
