"""Samplers: a meta-batch of episodes for a list of tasks, under shared or per-task policy parameters.

Every sampler has the same interface::

    sampler.sample_tasks(num_tasks, rng) -> list[task]
    sampler.sample(tasks, params, num_traj, generator=None) -> Episodes      # [T, H, B, ...]

``params`` are shared (pre-adaptation, every task runs the same policy) or per task (post-adaptation, leading
task dimension ``T``; see :mod:`rkmeta_rl.rl.policy`).

* :class:`TwinSampler` steps a batched torch twin of the task family (e.g. :class:`NavigationTwin`): one
  policy forward per time step for all ``T x B`` environments.
* :class:`BatchedSampler` works for any registered task family (the default for families without a twin): it
  keeps ``T x B`` Gymnasium env instances alive in a :class:`~rkmeta_rl.rl.vec_env.BatchedEnvs` (in this
  process, or in ``num_workers`` worker processes), re-tasks them every call and steps them all with one
  batched policy forward per time step; episodes end independently.
* :class:`GymSampler` is the plain reference: a loop over ``B`` env instances, task by task. Much slower; same
  interface and, for one task, the same episodes as :class:`BatchedSampler`.

:func:`make_sampler` picks the twin when the family has one, else :class:`BatchedSampler`.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Any, Mapping, Protocol, Sequence

import gymnasium as gym
import numpy as np
import torch

from .episodes import Episodes
from .policy import GaussianMLPPolicy, is_per_task
from .vec_env import BatchedEnvs

__all__ = ["Sampler", "TwinSampler", "BatchedSampler", "GymSampler", "make_sampler", "horizon_of",
           "SAMPLER_KINDS"]

#: ``make_sampler(..., sampler=...)`` choices.
SAMPLER_KINDS: tuple[str, ...] = ("auto", "twin", "batched", "gym")


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


def _checked_tasks(tasks: Any, num_tasks: int, family: str) -> list[Any]:
    """``sample_tasks``' answer, or a :class:`~rkmeta_rl.envs.protocol.TaskFamilyError` saying what is wrong."""
    from ..envs.protocol import TaskFamilyError

    if not isinstance(tasks, list):
        raise TaskFamilyError(f"{family}.sample_tasks must return a list, got {type(tasks).__name__}")
    if len(tasks) != int(num_tasks):
        raise TaskFamilyError(f"{family}.sample_tasks({num_tasks}, rng) returned {len(tasks)} tasks")
    return tasks


def supports_shared_model(env: gym.Env) -> bool:
    """Whether the family takes ``share_model=True`` (the built-in MuJoCo locomotion families do)."""
    return hasattr(type(env.unwrapped), "_share_model")


class _SeedStream:
    """The env-seed stream of a sampler that resets real env instances, exposed as :attr:`seed_rng`."""

    _seed_rng: np.random.Generator

    @property
    def seed_rng(self) -> np.random.Generator:
        """The numpy generator that draws the env reset seeds (part of a run's random state)."""
        return self._seed_rng

    @seed_rng.setter
    def seed_rng(self, rng: np.random.Generator) -> None:
        self._seed_rng = rng


class BatchedSampler(_SeedStream):
    """Fast generic sampler for any registered task family, on :class:`~rkmeta_rl.rl.vec_env.BatchedEnvs`.

    A call with ``T`` tasks and ``B`` trajectories runs ``N = T x B`` env instances, env ``n`` on task
    ``n // B``; instances are kept across calls (one set per ``N``, the ``max_cached`` most recent) and
    re-tasked with ``set_task`` + ``reset(options={"task": ...})``. Each time step makes one policy forward for
    all ``N`` observations: shared parameters see ``[N, obs_dim]``, per-task parameters (leading ``[T]``) see
    ``[T, B, obs_dim]``. Episodes end independently (termination, or truncation at the horizon); dead steps
    have mask 0 and zero observation, action, reward and log-probability.

    Random streams: action noise comes from the ``generator`` of :meth:`sample`; env ``n``'s reset seed is the
    ``n``-th draw ``int(_seed_rng.integers(2**31))`` of a numpy generator seeded with ``seed`` (the same draws,
    in the same order, as :class:`GymSampler`). ``MetaTRPO.rng_state()`` saves :attr:`seed_rng`, so a resumed run
    continues exactly; every reset is seeded, so reused and fresh env instances give the same episodes.

    Args:
        env_id: registered id of the task family.
        policy: the policy (used functionally).
        horizon: episode horizon (default: the spec's ``max_episode_steps``).
        device: where the policy runs and the episodes live.
        seed: seeds the env resets.
        env_kwargs: for ``gymnasium.make``; default ``{"share_model": True}`` for families that support it.
        num_workers: ``1`` steps every env in this process (fastest on few cores); ``k > 1`` spreads them over
            ``k`` worker processes (the id's spec travels to them, so its entry point must be importable).
        modules: modules a worker imports first (e.g. the one registering a custom family).
        max_cached: env sets (distinct ``N``) kept alive.
    """

    def __init__(self, env_id: str, policy: GaussianMLPPolicy, horizon: int | None = None,
                 device: torch.device | str = "cpu", seed: int = 0, env_kwargs: Mapping[str, Any] | None = None,
                 num_workers: int = 1, modules: Sequence[str] = (), max_cached: int = 3) -> None:
        if int(num_workers) < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.env_id = env_id
        self.policy = policy
        self.device = torch.device(device)
        self.num_workers = int(num_workers)
        self.modules = tuple(modules)
        self.max_cached = max(1, int(max_cached))
        self.env = gym.make(env_id, disable_env_checker=True, **dict(env_kwargs or {}))
        kwargs = dict(env_kwargs or {})
        if "share_model" not in kwargs and supports_shared_model(self.env):
            kwargs["share_model"] = True
        self.env_kwargs = kwargs
        self.horizon = horizon_of(self.env, horizon)
        self._family = type(self.env.unwrapped).__name__
        self._seed_rng = np.random.default_rng(seed)
        self._envs: OrderedDict[int, BatchedEnvs] = OrderedDict()

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Any]:
        return _checked_tasks(self.env.unwrapped.sample_tasks(num_tasks, rng), num_tasks, self._family)

    def _batched(self, n: int) -> BatchedEnvs:
        envs = self._envs.get(n)
        if envs is not None:
            self._envs.move_to_end(n)
            return envs
        if self.num_workers > 1:
            factory = functools.partial(gym.make, gym.spec(self.env_id), disable_env_checker=True,
                                        **self.env_kwargs)
            envs = BatchedEnvs(factory, n, self.horizon, num_workers=self.num_workers, modules=self.modules)
        else:
            envs = BatchedEnvs(self.env_id, n, self.horizon, env_kwargs=self.env_kwargs)
        self._envs[n] = envs
        while len(self._envs) > self.max_cached:
            _, old = self._envs.popitem(last=False)
            old.close()
        return envs

    def sample(self, tasks: Sequence[Any], params: Mapping[str, torch.Tensor], num_traj: int,
               generator: torch.Generator | None = None) -> Episodes:
        """Sample ``num_traj`` episodes per task; shapes in :mod:`rkmeta_rl.rl.episodes`."""
        t_, b_ = len(tasks), int(num_traj)
        if t_ < 1 or b_ < 1:
            raise ValueError(f"need at least one task and one trajectory, got {t_} and {b_}")
        n = t_ * b_
        dtype = next(iter(params.values())).dtype
        params = {k: v.detach() for k, v in params.items()}
        per_task_params = is_per_task(params)
        if per_task_params and params["w0"].shape[0] != t_:
            raise ValueError(f"per-task parameters for {params['w0'].shape[0]} tasks, {t_} tasks given")
        policy, device = self.policy, self.device

        def policy_fn(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            o = obs.to(device=device, dtype=dtype)
            if per_task_params:
                act, logp = policy.sample(params, o.reshape(t_, b_, -1), generator=generator)
                return act.reshape(n, -1), logp.reshape(n)
            return policy.sample(params, o, generator=generator)

        envs = self._batched(n)
        envs.set_tasks(list(tasks), per_env_repeat=b_)
        seeds = [int(self._seed_rng.integers(2**31)) for _ in range(n)]
        roll = envs.collect(policy_fn, horizon=self.horizon, seed=seeds)
        parts = roll.per_task(t_)

        def tt(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(x)).to(device=device, dtype=dtype)

        obs = tt(parts["obs"]).reshape(t_, self.horizon, b_, -1)
        act = tt(parts["actions"]).reshape(t_, self.horizon, b_, -1)
        return Episodes(obs, act, tt(parts["rewards"]), tt(parts["mask"]), tt(parts["aux"]), tasks=list(tasks))

    def close(self) -> None:
        """Close every kept env instance (and worker)."""
        for envs in self._envs.values():
            envs.close()
        self._envs.clear()
        self.env.close()


class GymSampler(_SeedStream):
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
                 device: torch.device | str = "cpu", seed: int = 0, use_twin: bool = True, *,
                 sampler: str = "auto", num_workers: int = 1, env_kwargs: Mapping[str, Any] | None = None,
                 modules: Sequence[str] = ()) -> Sampler:
    """The sampler of a task family.

    Args:
        env: a registered id or an env instance (a generic sampler needs one made by ``gym.make``).
        policy, horizon, device, seed: as in the samplers.
        use_twin: ``False`` is the older spelling of ``sampler="gym"`` (the reference loop), kept as it was.
        sampler: ``"auto"``: the family's batched torch twin when it has one (``make_twin``), else
            :class:`BatchedSampler`; ``"twin"``, ``"batched"``, ``"gym"`` force one.
        num_workers, env_kwargs, modules: for :class:`BatchedSampler`.
    """
    if sampler not in SAMPLER_KINDS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLER_KINDS)}; got {sampler!r}")
    env_obj = gym.make(env, disable_env_checker=True) if isinstance(env, str) else env
    kind = sampler
    if kind == "auto":
        kind = "gym" if not use_twin else ("twin" if hasattr(env_obj.unwrapped, "make_twin") else "batched")
    if kind == "twin":
        return TwinSampler(env_obj, policy, horizon=horizon, device=device)
    env_id = env if isinstance(env, str) else (env_obj.spec.id if env_obj.spec is not None else None)
    if env_id is None:
        raise ValueError("the generic samplers need a registered env (an id, or an instance made by gym.make)")
    if kind == "gym":
        return GymSampler(env_id, policy, horizon=horizon, device=device, seed=seed, env_kwargs=env_kwargs)
    return BatchedSampler(env_id, policy, horizon=horizon, device=device, seed=seed, env_kwargs=env_kwargs,
                          num_workers=num_workers, modules=modules)
