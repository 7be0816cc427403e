"""2D navigation task family (docs/task_families.md) and its batched pure-torch twin.

The environment follows the 2D navigation benchmark of MAML (Finn, Abbeel and Levine, "Model-Agnostic
Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017) as implemented in the reference MAML-RL code
(``maml_rl/envs/navigation.py``): a point starts at the origin, observes its position, moves by a velocity
clipped to ``[-0.1, 0.1]^2``, and is rewarded by minus its Euclidean distance to the goal *after* the move.
The episode terminates when both coordinates are within 0.01 of the goal; the horizon (100 steps) is the
``max_episode_steps`` of the registration.

:class:`NavigationTwin` steps ``num_tasks x num_traj`` copies at once with torch ops, in the same float32
arithmetic, so it is step-for-step equal to :class:`Navigation2D` (``tests/test_navigation.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

__all__ = ["Navigation2D", "NavigationTwin", "NavTask", "GOAL_LOW", "GOAL_HIGH", "MAX_SPEED", "GOAL_TOLERANCE",
           "HORIZON"]

#: A navigation task: ``{"goal": np.ndarray of shape (2,), float32}``.
NavTask = dict[str, np.ndarray]

GOAL_LOW: float = -0.5
GOAL_HIGH: float = 0.5
MAX_SPEED: float = 0.1
GOAL_TOLERANCE: float = 0.01
HORIZON: int = 100


def _as_goal(task: Any) -> np.ndarray:
    """The goal of a task dict (or a bare array) as a float32 array of shape (2,)."""
    goal = task["goal"] if isinstance(task, dict) else task
    goal = np.asarray(goal, dtype=np.float32).reshape(-1)
    if goal.shape != (2,):
        raise ValueError(f"a navigation goal has 2 coordinates, got shape {goal.shape}")
    return goal


class Navigation2D(gym.Env):
    """Point-mass navigation to a goal in the plane.

    Observation: position, float32, shape ``(2,)``. Action: velocity, float32, shape ``(2,)``, clipped to
    ``[-max_speed, max_speed]^2`` inside :meth:`step` (the policy may emit any real action).
    Reward: ``-sqrt(dx^2 + dy^2)`` with ``(dx, dy)`` = new position - goal. Terminated when ``|dx|`` and
    ``|dy|`` are both below ``goal_tolerance``. Truncation at the horizon comes from the registration
    (``max_episode_steps=100``).

    Task-family protocol (docs/task_families.md): :meth:`sample_tasks`, :meth:`set_task`, :meth:`get_task`, and
    ``reset(options={"task": task})``.

    Args:
        task: initial task ``{"goal": array(2)}``; default: a goal drawn from ``np_random`` at the first reset.
        render_mode: unused (no rendering); accepted for Gymnasium compatibility.
    """

    metadata = {"render_modes": []}

    def __init__(self, task: NavTask | None = None, render_mode: str | None = None) -> None:
        super().__init__()
        self.observation_space = spaces.Box(low=-np.inf, high=np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(low=-MAX_SPEED, high=MAX_SPEED, shape=(2,), dtype=np.float32)
        self.render_mode = render_mode
        self._goal: np.ndarray | None = None if task is None else _as_goal(task)
        self._state = np.zeros(2, dtype=np.float32)

    # ---- task-family protocol -------------------------------------------------------------------
    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[NavTask]:
        """``num_tasks`` goals drawn uniformly from ``[-0.5, 0.5]^2`` with ``rng``."""
        goals = rng.uniform(GOAL_LOW, GOAL_HIGH, size=(int(num_tasks), 2)).astype(np.float32)
        return [{"goal": g} for g in goals]

    def set_task(self, task: NavTask) -> None:
        """Set the goal; takes effect immediately (the reference code's semantics)."""
        self._goal = _as_goal(task)

    def get_task(self) -> NavTask:
        """The current task (a copy)."""
        if self._goal is None:
            raise RuntimeError("no task set yet: call reset() or set_task() first")
        return {"goal": self._goal.copy()}

    @staticmethod
    def oracle_action(obs: np.ndarray, task: NavTask) -> np.ndarray:
        """The optimal action when the goal is known: straight at it, each axis clipped to the speed limit.

        After ``t`` such steps the position is the goal clipped to ``[-0.1 t, 0.1 t]^2``, the point of the
        reachable box closest to the goal, so every step's distance (hence the return) is the best possible.
        """
        goal = _as_goal(task)
        return np.clip(goal - np.asarray(obs, dtype=np.float32), -MAX_SPEED, MAX_SPEED).astype(np.float32)

    # ---- batched twin -----------------------------------------------------------------------------
    @staticmethod
    def make_twin(tasks: Sequence[NavTask], num_traj: int, horizon: int = HORIZON,
                  device: torch.device | str = "cpu") -> "NavigationTwin":
        """A :class:`NavigationTwin` for ``tasks x num_traj`` environments (used by the twin sampler)."""
        return NavigationTwin.from_tasks(tasks, num_traj, horizon=horizon, device=device)

    # ---- gymnasium API ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options is not None and options.get("task") is not None:
            self.set_task(options["task"])
        elif self._goal is None:
            self._goal = self.np_random.uniform(GOAL_LOW, GOAL_HIGH, size=2).astype(np.float32)
        self._state = np.zeros(2, dtype=np.float32)
        return self._state.copy(), {"task": self.get_task()}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._goal is None:
            raise RuntimeError("call reset() before step()")
        act = np.clip(np.asarray(action, dtype=np.float32).reshape(2), -MAX_SPEED, MAX_SPEED).astype(np.float32)
        self._state = (self._state + act).astype(np.float32)
        dx = self._state[0] - self._goal[0]
        dy = self._state[1] - self._goal[1]
        reward = -np.sqrt(dx * dx + dy * dy)  # float32 arithmetic, as the twin
        terminated = bool(np.abs(dx) < GOAL_TOLERANCE and np.abs(dy) < GOAL_TOLERANCE)
        return self._state.copy(), float(reward), terminated, False, {"task": self.get_task()}


class NavigationTwin:
    """``num_tasks x num_traj`` copies of :class:`Navigation2D` stepped at once with torch ops.

    Shapes: goals ``[T, 2]``; observations ``[T, B, 2]``; actions ``[T, B, 2]``; rewards, ``terminated``,
    ``truncated`` and ``alive`` ``[T, B]`` with ``T = num_tasks``, ``B = num_traj``.

    Each copy's episode ends on its own. A copy that has ended keeps its state, returns reward 0, and keeps
    reporting the ``terminated`` / ``truncated`` flag it ended with (sticky), so the sampler masks it.
    Arithmetic is float32 in the same order as :meth:`Navigation2D.step`, hence bitwise equal.

    Args:
        goals: ``[T, 2]`` goal positions.
        num_traj: trajectories (copies) per task ``B``.
        horizon: steps after which a copy is truncated (the registration's ``max_episode_steps``).
        device: torch device of every tensor.
    """

    def __init__(self, goals: torch.Tensor | np.ndarray, num_traj: int, horizon: int = HORIZON,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.goals = torch.as_tensor(np.asarray(goals, dtype=np.float32) if not isinstance(goals, torch.Tensor)
                                     else goals, dtype=torch.float32, device=self.device)
        if self.goals.dim() != 2 or self.goals.shape[1] != 2:
            raise ValueError(f"goals must have shape [num_tasks, 2], got {tuple(self.goals.shape)}")
        if int(num_traj) < 1 or int(horizon) < 1:
            raise ValueError("num_traj and horizon must be >= 1")
        self.num_tasks = int(self.goals.shape[0])
        self.num_traj = int(num_traj)
        self.horizon = int(horizon)
        self.obs_dim = 2
        self.act_dim = 2
        self.reset()

    @classmethod
    def from_tasks(cls, tasks: Sequence[NavTask], num_traj: int, horizon: int = HORIZON,
                   device: torch.device | str = "cpu") -> "NavigationTwin":
        """Build from task dicts as returned by :meth:`Navigation2D.sample_tasks`."""
        goals = np.stack([_as_goal(t) for t in tasks]) if len(tasks) else np.zeros((0, 2), np.float32)
        return cls(goals, num_traj, horizon=horizon, device=device)

    def reset(self) -> torch.Tensor:
        """Every copy back at the origin; returns observations ``[T, B, 2]`` (float32)."""
        shape = (self.num_tasks, self.num_traj)
        self.state = torch.zeros(*shape, 2, dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros(shape, dtype=torch.bool, device=self.device)
        self.truncated = torch.zeros(shape, dtype=torch.bool, device=self.device)
        self.t = 0
        return self.state.clone()

    @property
    def alive(self) -> torch.Tensor:
        """``[T, B]`` bool: copies whose episode has not ended."""
        return ~(self.terminated | self.truncated)

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step every live copy.

        Args:
            actions: ``[T, B, 2]`` velocities (any real values; clipped here), any float dtype.

        Returns:
            ``(obs [T, B, 2] float32, reward [T, B] float32, terminated [T, B] bool, truncated [T, B] bool)``;
            copies that had already ended keep their state and get reward 0.
        """
        alive = self.alive
        act = actions.to(device=self.device, dtype=torch.float32).clamp(-MAX_SPEED, MAX_SPEED)
        new_state = self.state + act
        self.state = torch.where(alive.unsqueeze(-1), new_state, self.state)
        d = self.state - self.goals.unsqueeze(1)
        dx, dy = d[..., 0], d[..., 1]
        # torch's vectorised float32 sqrt is not correctly rounded (1 ulp off numpy's on ~17% of inputs);
        # a float64 sqrt rounded to float32 is, so the twin's rewards equal the env's bitwise
        reward = -torch.sqrt((dx * dx + dy * dy).double()).float()
        reward = torch.where(alive, reward, torch.zeros_like(reward))
        self.t += 1
        reached = (dx.abs() < GOAL_TOLERANCE) & (dy.abs() < GOAL_TOLERANCE)
        self.terminated = self.terminated | (alive & reached)
        if self.t >= self.horizon:
            self.truncated = self.truncated | (alive & ~reached)
        return self.state.clone(), reward, self.terminated.clone(), self.truncated.clone()
