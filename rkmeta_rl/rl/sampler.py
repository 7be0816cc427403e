"""Samplers: a meta-batch of episodes for a list of tasks, under shared or per-task policy parameters.

Both samplers have the same interface::

    sampler.sample_tasks(num_tasks, rng) -> list[task]
    sampler.sample(tasks, params, num_traj, generator=None) -> Episodes      # [T, H, B, ...]

``params`` are shared (pre-adaptation, every task runs the same policy) or per task (post-adaptation, leading
task dimension ``T``; see :mod:`rkmeta_rl.rl.policy`).

* :class:`TwinSampler` steps a batched torch twin of the task family (e.g. :class:`NavigationTwin`): one
  policy forward per time step for all ``T x B`` environments.
* :class:`GymSampler` works for any registered task family: it loops over Gymnasium env instances (one per
  trajectory slot, reused across tasks), task by task. Slower; same interface.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import gymnasium as gym
import numpy as np
import torch

from .episodes import Episodes
from .policy import GaussianMLPPolicy, is_per_task

__all__ = ["Sampler", "TwinSampler", "GymSampler", "make_sampler", "horizon_of"]


class Sampler(Protocol):
    """What the meta-learner asks of a sampler."""

    horizon: int

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Any]: ...

    def sample(self, tasks: Sequence[Any], params: Mapping[str, torch.Tensor], num_traj: int,
               generator: torch.Generator | None = None) -> Episodes: ...


def horizon_of(env: gym.Env, horizon: int | None = None) -> int:
    """The episode horizon: ``horizon`` if given, else the env spec's ``max_episode_steps``."""
    if horizon is not None:
        return int(horizon)
    spec = getattr(env, "spec", None)
    if spec is not None and spec.max_episode_steps is not None:
        return int(spec.max_episode_steps)
    raise ValueError("the env has no max_episode_steps; pass horizon=")


def _task_params(params: Mapping[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i] for k, v in params.items()} if is_per_task(params) else dict(params)


class TwinSampler:
    """Sampler over a batched torch twin.

    Args:
        env: a Gymnasium env whose unwrapped env has ``make_twin(tasks, num_traj, horizon, device)`` and the
            task-family protocol (``sample_tasks``).
        policy: the policy (used functionally).
        horizon: episode horizon (default: the env's ``max_episode_steps``).
        device: where the twin and the episodes live.
    """

    def __init__(self, env: gym.Env, policy: GaussianMLPPolicy, horizon: int | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.env = env
        self.policy = policy
        self.horizon = horizon_of(env, horizon)
        self.device = torch.device(device)
        if not hasattr(env.unwrapped, "make_twin"):
            raise TypeError(f"{type(env.unwrapped).__name__} has no batched twin (make_twin)")

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Any]:
        return self.env.unwrapped.sample_tasks(num_tasks, rng)

    def sample(self, tasks: Sequence[Any], params: Mapping[str, torch.Tensor], num_traj: int,
               generator: torch.Generator | None = None) -> Episodes:
        """Sample ``num_traj`` episodes per task; shapes in :mod:`rkmeta_rl.rl.episodes`."""
        twin = self.env.unwrapped.make_twin(tasks, num_traj, horizon=self.horizon, device=self.device)
        dtype = next(iter(params.values())).dtype
        params = {k: v.detach() for k, v in params.items()}
        t_, b_, h_ = len(tasks), int(num_traj), self.horizon
        obs_buf = torch.zeros(t_, h_, b_, twin.obs_dim, dtype=dtype, device=self.device)
        act_buf = torch.zeros(t_, h_, b_, twin.act_dim, dtype=dtype, device=self.device)
        rew_buf = torch.zeros(t_, h_, b_, dtype=dtype, device=self.device)
        mask_buf = torch.zeros(t_, h_, b_, dtype=dtype, device=self.device)
        logp_buf = torch.zeros(t_, h_, b_, dtype=dtype, device=self.device)
        obs = twin.reset().to(dtype)
        for t in range(h_):
            alive = twin.alive
            if not bool(alive.any()):
                break
            act, logp = self.policy.sample(params, obs, generator=generator)
            nxt, rew, _, _ = twin.step(act)
            m = alive.to(dtype)
            obs_buf[:, t] = obs
            act_buf[:, t] = act * m.unsqueeze(-1)
            rew_buf[:, t] = rew.to(dtype)
            mask_buf[:, t] = m
            logp_buf[:, t] = logp * m
            obs = nxt.to(dtype)
        return Episodes(obs_buf, act_buf, rew_buf, mask_buf, logp_buf,
                        tasks=list(tasks))


class GymSampler:
    """Generic sampler looping over Gymnasium env instances (any task family).

    ``num_traj`` env instances are made (and kept); for each task they are reset with
    ``options={"task": task}`` (after ``set_task``) and stepped together, with one policy forward per time step
    for the task's ``num_traj`` observations.

    Args:
        env_id: registered id of the task family.
        policy: the policy.
        horizon: episode horizon (default: the spec's ``max_episode_steps``).
        device: where the episodes live.
        seed: seeds the env instances' ``reset``.
        env_kwargs: passed to ``gym.make``.
    """

    def __init__(self, env_id: str, policy: GaussianMLPPolicy, horizon: int | None = None,
                 device: torch.device | str = "cpu", seed: int = 0,
                 env_kwargs: Mapping[str, Any] | None = None) -> None:
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.policy = policy
        self.device = torch.device(device)
        self.envs: list[gym.Env] = [self._make()]
        self.horizon = horizon_of(self.envs[0], horizon)
        self._seed_rng = np.random.default_rng(seed)

    def _make(self) -> gym.Env:
        return gym.make(self.env_id, disable_env_checker=True, **self.env_kwargs)

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Any]:
        return self.envs[0].unwrapped.sample_tasks(num_tasks, rng)

    def sample(self, tasks: Sequence[Any], params: Mapping[str, torch.Tensor], num_traj: int,
               generator: torch.Generator | None = None) -> Episodes:
        """Sample ``num_traj`` episodes per task; shapes in :mod:`rkmeta_rl.rl.episodes`."""
        while len(self.envs) < num_traj:
            self.envs.append(self._make())
        envs = self.envs[:num_traj]
        dtype = next(iter(params.values())).dtype
        params = {k: v.detach() for k, v in params.items()}
        space = envs[0].observation_space
        obs_dim = int(np.prod(space.shape))
        act_dim = int(np.prod(envs[0].action_space.shape))
        t_, b_, h_ = len(tasks), int(num_traj), self.horizon
        obs_buf = np.zeros((t_, h_, b_, obs_dim), np.float64)
        act_buf = np.zeros((t_, h_, b_, act_dim), np.float64)
        rew_buf = np.zeros((t_, h_, b_), np.float64)
        mask_buf = np.zeros((t_, h_, b_), np.float64)
        logp_buf = np.zeros((t_, h_, b_), np.float64)
        for i, task in enumerate(tasks):
            p_i = _task_params(params, i)
            obs = np.zeros((b_, obs_dim))
            for j, env in enumerate(envs):
                env.unwrapped.set_task(task)
                o, _ = env.reset(seed=int(self._seed_rng.integers(2**31)), options={"task": task})
                obs[j] = np.asarray(o, np.float64).reshape(-1)
            alive = np.ones(b_, bool)
            for t in range(h_):
                if not alive.any():
                    break
                o_t = torch.as_tensor(obs, dtype=dtype, device=self.device)
                act, logp = self.policy.sample(p_i, o_t, generator=generator)
                act_np = act.cpu().double().numpy()
                obs_buf[i, t] = obs
                obs_buf[i, t, ~alive] = 0.0
                for j, env in enumerate(envs):
                    if not alive[j]:
                        continue
                    o, r, term, trunc, _ = env.step(act_np[j].astype(env.action_space.dtype))
                    act_buf[i, t, j] = act_np[j]
                    rew_buf[i, t, j] = r
                    mask_buf[i, t, j] = 1.0
                    logp_buf[i, t, j] = float(logp[j])
                    obs[j] = np.asarray(o, np.float64).reshape(-1)
                    if term or trunc:
                        alive[j] = False

        def tt(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x, dtype=dtype, device=self.device)

        return Episodes(tt(obs_buf), tt(act_buf), tt(rew_buf), tt(mask_buf), tt(logp_buf), tasks=list(tasks))


def make_sampler(env: str | gym.Env, policy: GaussianMLPPolicy, horizon: int | None = None,
                 device: torch.device | str = "cpu", seed: int = 0, use_twin: bool = True) -> Sampler:
    """The twin sampler when the family has a batched twin (and ``use_twin``), else the generic one."""
    env_obj = gym.make(env, disable_env_checker=True) if isinstance(env, str) else env
    if use_twin and hasattr(env_obj.unwrapped, "make_twin"):
        return TwinSampler(env_obj, policy, horizon=horizon, device=device)
    env_id = env if isinstance(env, str) else (env_obj.spec.id if env_obj.spec is not None else None)
    if env_id is None:
        raise ValueError("the generic sampler needs a registered env (an id, or an instance made by gym.make)")
    return GymSampler(env_id, policy, horizon=horizon, device=device, seed=seed)
