"""Checking that an environment is a task family (docs/task_families.md), with errors that say what to fix.

A task family is a Gymnasium env whose *unwrapped* env has ``sample_tasks(num_tasks, rng) -> list``,
``set_task(task)`` (or accepts ``reset(options={"task": task})``) and ``get_task()``, registered under an id.
:func:`validate_task_family` exercises all of it on a live instance::

    from rkmeta_rl.envs.protocol import validate_task_family
    report = validate_task_family("rkmeta/HalfCheetahVel-v0")      # raises TaskFamilyError on a violation
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import registry

__all__ = ["TaskFamilyError", "TaskFamilyReport", "validate_task_family", "tasks_equal", "PROTOCOL_METHODS"]

#: Methods the unwrapped env must have (``set_task`` may be replaced by ``reset(options={"task": ...})``).
PROTOCOL_METHODS: tuple[str, ...] = ("sample_tasks", "set_task", "get_task")


class TaskFamilyError(TypeError):
    """An environment does not follow the task-family protocol; the message says what is wrong."""


@dataclass(frozen=True)
class TaskFamilyReport:
    """What :func:`validate_task_family` found.

    Attributes:
        env_id: the registered id (``None`` for an instance that was not made by ``gym.make``).
        num_tasks: tasks drawn by the check.
        tasks: the first ``num_tasks`` tasks drawn with ``np.random.default_rng(0)``.
        uses_set_task: whether the env has ``set_task`` (else tasks go in through ``reset`` options only).
        horizon: the spec's ``max_episode_steps`` (``None`` if unset).
        obs_shape, act_shape: of the spaces.
    """

    env_id: str | None
    num_tasks: int
    tasks: list[Any]
    uses_set_task: bool
    horizon: int | None
    obs_shape: tuple[int, ...]
    act_shape: tuple[int, ...]


def tasks_equal(a: Any, b: Any) -> bool:
    """Structural equality of two tasks (dicts, sequences, numpy arrays and scalars, compared exactly)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(tasks_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        return a_arr.shape == b_arr.shape and bool(np.array_equal(a_arr, b_arr))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(tasks_equal(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _make(env_id: str) -> gym.Env:
    if env_id not in registry:
        close = difflib.get_close_matches(env_id, list(registry.keys()), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise TaskFamilyError(
            f"{env_id!r} is not a registered Gymnasium id.{hint} If the family lives in your own module, import "
            f"the module that registers it first (scripts: --module your_package.your_envs; code: import it, "
            f"or pass the env instance).")
    return gym.make(env_id, disable_env_checker=True)


def _rollout(env: gym.Env, task: Any, uses_set_task: bool, seed: int, actions: np.ndarray
             ) -> tuple[list[np.ndarray], list[float]]:
    """Reset with ``seed`` into ``task`` and play ``actions``; returns the observations and rewards."""
    base = env.unwrapped
    if uses_set_task:
        base.set_task(task)
    obs, _ = env.reset(seed=seed, options={"task": task})
    got = base.get_task()
    if not tasks_equal(got, task):
        how = "set_task(task) then reset(options={'task': task})" if uses_set_task else \
            "reset(options={'task': task})"
        raise TaskFamilyError(f"after {how}, get_task() returned {got!r} instead of {task!r}")
    observations, rewards = [_finite(np.array(obs, dtype=np.float64, copy=True), "reset() observation", task)], []
    for t, a in enumerate(actions):
        obs, r, terminated, truncated, _ = env.step(a)
        observations.append(_finite(np.array(obs, dtype=np.float64, copy=True), f"step {t} observation", task))
        rewards.append(float(_finite(np.array(r, dtype=np.float64), f"step {t} reward", task)))
        if terminated or truncated:
            break
    return observations, rewards


def _finite(value: np.ndarray, what: str, task: Any) -> np.ndarray:
    """``value`` if every entry is finite; else a :class:`TaskFamilyError` saying NaN or infinite."""
    if not np.all(np.isfinite(value)):
        kind = "NaN" if np.any(np.isnan(value)) else "infinite"
        raise TaskFamilyError(f"the {what} is {kind} for task {task!r} (rewards and observations must be finite "
                              f"numbers)")
    return value


def _same(run_a: tuple[list[np.ndarray], list[float]], run_b: tuple[list[np.ndarray], list[float]]) -> bool:
    (obs_a, rew_a), (obs_b, rew_b) = run_a, run_b
    return (len(obs_a) == len(obs_b) and all(np.array_equal(x, y) for x, y in zip(obs_a, obs_b))
            and rew_a == rew_b)


def validate_task_family(env_id_or_env: str | gym.Env, num_tasks: int = 3, num_steps: int = 5,
                         seed: int = 0, max_draws: int = 64) -> TaskFamilyReport:
    """Check that an env follows the task-family protocol, raising :class:`TaskFamilyError` on the first miss.

    Checks, in order: the id is registered (else: close matches and the ``--module`` hint); the unwrapped env
    has ``sample_tasks`` and ``get_task``, and ``set_task`` or a ``reset`` that takes ``options={"task": ...}``
    (names whatever is missing); ``sample_tasks(num_tasks, rng)`` returns a ``list`` of ``num_tasks`` tasks
    and draws only from ``rng`` (the same seed gives the same tasks); ``get_task()`` returns the task that was
    set; and the task matters: from the same seed, the same actions under two different tasks give different
    rewards or observations, while the same task replayed gives the same ones.

    Args:
        env_id_or_env: a registered id, or an env instance (its own state is changed by the check).
        num_tasks: tasks asked of ``sample_tasks``.
        num_steps: steps played per task in the "task matters" check.
        seed: seed of the resets and of the random actions.
        max_draws: tasks drawn at most while looking for two distinct ones (families such as ``Dir`` have two).

    Returns:
        A :class:`TaskFamilyReport`.
    """
    if isinstance(env_id_or_env, str):
        env = _make(env_id_or_env)
        env_id: str | None = env_id_or_env
    elif isinstance(env_id_or_env, gym.Env):
        env = env_id_or_env
        env_id = env.spec.id if env.spec is not None else None
    else:
        raise TaskFamilyError(f"expected a registered id or a gymnasium.Env, got {type(env_id_or_env).__name__}")
    base = env.unwrapped
    name = type(base).__name__

    missing = [m for m in PROTOCOL_METHODS if not callable(getattr(base, m, None))]
    uses_set_task = "set_task" not in missing
    if missing == ["set_task"]:
        # set_task is optional when reset(options={"task": ...}) installs the task: checked below via get_task
        missing = []
    if missing:
        raise TaskFamilyError(
            f"{name} is not a task family: its unwrapped env lacks {', '.join(m + '()' for m in missing)} "
            f"(needs sample_tasks(num_tasks, rng) -> list, set_task(task) or reset(options={{'task': task}}), "
            f"and get_task())")

    tasks = base.sample_tasks(num_tasks, np.random.default_rng(seed))
    if not isinstance(tasks, list):
        raise TaskFamilyError(f"{name}.sample_tasks must return a list, got {type(tasks).__name__}")
    if len(tasks) != num_tasks:
        raise TaskFamilyError(f"{name}.sample_tasks({num_tasks}, rng) returned {len(tasks)} tasks")
    again = base.sample_tasks(num_tasks, np.random.default_rng(seed))
    if not (isinstance(again, list) and len(again) == len(tasks) and all(map(tasks_equal, tasks, again))):
        raise TaskFamilyError(
            f"{name}.sample_tasks gave different tasks for the same rng seed: it must draw only from the rng "
            f"it is given (not np.random or self.np_random)")

    # two distinct tasks
    pool = tasks if num_tasks >= 2 else base.sample_tasks(2, np.random.default_rng(seed + 1))
    first = pool[0]
    other = next((t for t in pool[1:] if not tasks_equal(t, first)), None)
    if other is None:
        more = base.sample_tasks(max_draws, np.random.default_rng(seed + 1))
        other = next((t for t in more if not tasks_equal(t, first)), None)
    if other is None:
        raise TaskFamilyError(f"{name}.sample_tasks returned {max_draws} identical tasks: nothing to adapt to")

    action_rng = np.random.default_rng(seed)
    env.action_space.seed(int(action_rng.integers(2**31)))
    actions = np.stack([env.action_space.sample() for _ in range(num_steps)])
    run_a = _rollout(env, first, uses_set_task, seed, actions)
    run_b = _rollout(env, other, uses_set_task, seed, actions)
    run_a2 = _rollout(env, first, uses_set_task, seed, actions)
    if not _same(run_a, run_a2):
        raise TaskFamilyError(
            f"{name}: the same task, reset seed and actions gave different rewards or observations; the env must "
            f"draw its randomness from self.np_random (seeded by reset) so that tasks can be compared")
    if _same(run_a, run_b):
        how = "set_task" if uses_set_task else "reset(options={'task': ...})"
        raise TaskFamilyError(
            f"{name}: {how} does not change the dynamics or the reward: tasks {first!r} and {other!r} gave the "
            f"same observations and rewards for the same seed and actions")

    spec = env.spec
    return TaskFamilyReport(
        env_id=env_id, num_tasks=num_tasks, tasks=tasks, uses_set_task=uses_set_task,
        horizon=None if spec is None else spec.max_episode_steps,
        obs_shape=tuple(env.observation_space.shape or ()), act_shape=tuple(env.action_space.shape or ()))
