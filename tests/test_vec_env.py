"""BatchedEnvs: equal to stepping each env alone, independent episode ends, skipped ended envs, workers."""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import pytest
import torch

from rkmeta_rl.envs.locomotion import LOCOMOTION_IDS, HalfCheetahVel, register_locomotion
from rkmeta_rl.rl.vec_env import BatchedEnvs, Rollout

register_locomotion()
HORIZON = 30


def _scripted(actions: np.ndarray):  # policy_fn replaying actions [H, N, act]; aux = step index
    t = [0]

    def policy_fn(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert obs.dtype == torch.float32 and obs.shape[0] == actions.shape[1]
        a = torch.from_numpy(actions[t[0]])
        t[0] += 1
        return a, torch.full((obs.shape[0],), float(t[0]))

    return policy_fn


def _reference(env_id: str, task: dict, seed: int, actions: np.ndarray, horizon: int
               ) -> tuple[list[np.ndarray], list[float], list[dict], bool, bool]:
    env = gym.make(env_id, max_episode_steps=horizon)
    env.unwrapped.set_task(task)
    obs, _ = env.reset(seed=seed, options={"task": task})
    observations, rewards, infos = [obs], [], []
    terminated = truncated = False
    for a in actions:
        obs, r, terminated, truncated, info = env.step(a)
        observations.append(obs)
        rewards.append(r)
        infos.append(info)
        if terminated or truncated:
            break
    return observations, rewards, infos, terminated, truncated


@pytest.mark.parametrize("name, share_model", [("HalfCheetahVel", False), ("AntVel", False), ("AntGoal", True)])
def test_equals_separate_envs(name: str, share_model: bool) -> None:
    env_id = LOCOMOTION_IDS[name]
    num_tasks, traj = 3, 2
    n = num_tasks * traj
    envs = BatchedEnvs(env_id, n, horizon=HORIZON, obs_dtype=np.float64, env_kwargs={"share_model": share_model},
                       info_keys=("reward_task", "reward_ctrl"))
    tasks = envs.sample_tasks(num_tasks, np.random.default_rng(0))
    envs.set_tasks(tasks, traj)
    assert envs.tasks == [tasks[i // traj] for i in range(n)]
    actions = (np.random.default_rng(1).uniform(-1, 1, (HORIZON, n, *envs.act_shape)) * 3).astype(np.float32)
    ro = envs.collect(_scripted(actions), seed=10)
    assert ro.obs.shape == (HORIZON, n, *envs.obs_shape) and ro.rewards.shape == (HORIZON, n)
    for i in range(n):
        obs, rew, infos, term, trunc = _reference(env_id, tasks[i // traj], 10 + i, actions[:, i], HORIZON)
        length = len(rew)
        assert ro.lengths[i] == length
        np.testing.assert_array_equal(ro.obs[:length, i], np.stack(obs[:-1]))
        np.testing.assert_array_equal(ro.last_obs[i], obs[-1])
        np.testing.assert_array_equal(ro.rewards[:length, i], rew)
        np.testing.assert_array_equal(ro.infos["reward_task"][:length, i], [f["reward_task"] for f in infos])
        np.testing.assert_array_equal(ro.actions[:length, i], actions[:length, i])
        np.testing.assert_array_equal(ro.aux[:length, i], np.arange(1, length + 1))
        assert ro.mask[:length, i].all() and not ro.mask[length:, i].any()
        assert not ro.rewards[length:, i].any() and not ro.obs[length:, i].any()
        assert ro.terminated[length - 1, i] == term and ro.truncated[length - 1, i] == trunc
        assert ro.terminated[:, i].sum() + ro.truncated[:, i].sum() == 1
    if name.startswith("Ant"):  # wild actions topple some ants: episodes end independently
        assert ro.terminated.any() and ro.lengths.min() < HORIZON and ro.lengths.max() == HORIZON
    per_task = ro.per_task(num_tasks)
    assert per_task["obs"].shape == (num_tasks, HORIZON, traj, *envs.obs_shape)
    np.testing.assert_array_equal(per_task["rewards"][1, :, 0], ro.rewards[:, traj])
    envs.close()


def test_ended_envs_are_skipped() -> None:
    envs = BatchedEnvs(LOCOMOTION_IDS["AntDir"], 3, horizon=10, seed=0)
    envs.set_tasks([{"direction": 1.0}], 3)
    envs.reset()
    base = envs._local.envs[1].unwrapped
    qpos, qvel = base.data.qpos.copy(), base.data.qvel.copy()
    qpos[2] = 1.5  # env 1 is unhealthy: it terminates on its first step
    base.set_state(qpos, qvel)
    res = envs.step(np.zeros((3, 8), np.float32))
    assert res.terminated.tolist() == [False, True, False] and res.alive.tolist() == [True, False, True]
    t_end = base.data.time
    for _k in range(9):
        res = envs.step(np.zeros((3, 8), np.float32))
        assert base.data.time == t_end and res.rewards[1] == 0.0 and not res.stepped[1]  # no physics
    assert res.truncated.tolist() == [True, False, True] and not envs.alive.any()
    with pytest.raises(ValueError, match="actions must have shape"):
        envs.step(np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="2 tasks x 2 repeats != 3 envs"):
        envs.set_tasks([{"direction": 1.0}] * 2, 2)


def test_collect_with_torch_policy_and_horizon() -> None:
    from rkmeta_rl.rl.policy import GaussianMLPPolicy

    envs = BatchedEnvs(LOCOMOTION_IDS["HalfCheetahDir"], 4, seed=0)
    assert envs.horizon == 200
    envs.set_tasks(envs.sample_tasks(2, np.random.default_rng(0)), 2)
    policy = GaussianMLPPolicy(17, 6, (100, 100))
    params = policy.params()
    ro = envs.collect(lambda obs: policy.sample(params, obs), horizon=12)
    assert isinstance(ro, Rollout) and ro.obs.dtype == np.float32 and ro.lengths.tolist() == [12] * 4
    assert ro.truncated[11].all() and ro.aux.shape == (12, 4)


def test_workers_equal_in_process() -> None:
    factory = functools.partial(HalfCheetahVel)  # picklable: the worker makes its own envs
    tasks = [{"velocity": 0.3}, {"velocity": 1.1}]
    actions = np.random.default_rng(2).uniform(-1, 1, (8, 4, 6)).astype(np.float32)
    rollouts = []
    for workers in (1, 2):
        with BatchedEnvs(factory, 4, horizon=8, num_workers=workers, info_keys=("reward_task",)) as envs:
            envs.set_tasks(tasks, 2)
            rollouts.append(envs.collect(_scripted(actions), seed=5))
    a, b = rollouts
    for field in ("obs", "rewards", "mask", "truncated", "last_obs"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    np.testing.assert_array_equal(a.infos["reward_task"], b.infos["reward_task"])
