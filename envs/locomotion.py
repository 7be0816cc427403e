"""MuJoCo locomotion task families (docs/task_families.md) on Gymnasium's v5 HalfCheetah and Ant models.

Families, task distributions and rewards follow MAML (Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning
for Fast Adaptation of Deep Networks", ICML 2017; its code ``cbfinn/maml_rl``, ``rllab/envs/mujoco/
half_cheetah_env_rand*.py`` and ``ant_env_rand*.py``), ProMP (Rothfuss et al., "ProMP: Proximal Meta-Policy
Search", ICLR 2019) and the reference PyTorch MAML-RL code (``tristandeleu/pytorch-maml-rl``,
``maml_rl/envs/mujoco/half_cheetah.py`` and ``ant.py``):

================  ==========================  ======================================================
family            task ~                      reward per step (``v`` = torso forward velocity)
================  ==========================  ======================================================
HalfCheetahVel    ``velocity`` ~ U[0, 2]      ``-|v - velocity|``              ``- 0.05 |a|^2``
HalfCheetahDir    ``direction`` in {-1, +1}   ``direction * v``                ``- 0.05 |a|^2``
AntVel            ``velocity`` ~ U[0, 3]      ``-|v - velocity|``  ``- 0.005 |a|^2 - 0.0005 |clip(F)|^2 + 1.05``
AntDir            ``direction`` in {-1, +1}   ``direction * v``    ``- 0.005 |a|^2 - 0.0005 |clip(F)|^2 + 0.05``
AntGoal           ``goal`` ~ U[-3, 3]^2       ``-|xy - goal|_1``   ``- 0.005 |a|^2 - 0.0005 |clip(F)|^2 + 4.05``
================  ==========================  ======================================================

Exactly what is computed, and where it comes from:

* ``v = (x_after - x_before) / dt`` over one ``step`` (``dt = 5 x 0.01 = 0.05`` s), of the root ``qpos[0]`` for
  the cheetah and of the torso body position for the ant (Gymnasium v5's definition, and the reference code's).
* Control cost ``w_ctrl * sum(a^2)`` (in float64) of the action *as passed* (MuJoCo clamps the applied control to the
  actuator range, the cost sees the raw action, as in every reference): ``w_ctrl = 0.5 * 1e-1`` for the
  cheetah (``half_cheetah.py``), ``0.5 * 1e-2`` for the ant (``ant.py``; ``ant_env_rand*.py``; the ant's action
  range is [-1, 1], so the reference's ``action / scaling`` is the action itself).
* Ant contact cost ``0.5 * 1e-3 * sum(clip(cfrc_ext, -1, 1)^2)`` (all references; Gymnasium v5 computes
  ``cfrc_ext`` after every step with ``mj_rnePostConstraint``, so it is not the all-zero of mujoco-py >= 2).
* Ant survival reward: ``0.05`` every step (references), plus the constant that the MAML code adds to the
  task term "to make it happy, not suicidal": ``+1.0`` for AntVel (``ant_env_rand.py``, ``ant.py``) and
  ``+4.0`` for AntGoal (``ant_env_rand_goal.py``); we book these constants as survival reward so that
  ``info["reward_task"]`` is the pure task term. Like the references, it is paid on every step, including the
  one on which the ant falls.
* AntGoal's distance is the L1 distance of the torso ``xy`` to the goal, as in ``ant_env_rand_goal.py`` and
  ProMP's ``ant_rand_goal.py`` (``goal_distance="l2"`` gives the Euclidean one).
* Episodes: the cheetah never terminates; the ant terminates when its torso height leaves ``[0.2, 1.0]`` or
  the state is not finite (Gymnasium v5's default, the references' ``notdone``). The horizon is the
  registration's ``max_episode_steps = 200`` (MAML paper); ``gymnasium.make(id, max_episode_steps=100)`` gives
  the reference code's 100.
* Observations are Gymnasium v5's defaults (cheetah: 17 = ``qpos[1:]`` and ``qvel``; ant: 105 = ``qpos[2:]``,
  ``qvel``, clipped ``cfrc_ext`` without the world body), except AntGoal, which also observes the torso ``x, y``
  (107; the goal is a position, so the policy must see where it is, as in the references). Any v5 keyword
  (``exclude_current_positions_from_observation``, ``reset_noise_scale``, ...) passes through.
* ``share_model=True`` makes all instances of a family in the process share one compiled ``MjModel`` (each
  keeps its own ``MjData``): less memory and faster batched sampling of hundreds of instances.

Every step's ``info`` carries the reward terms separately: ``reward_task`` and ``reward_ctrl`` (the negative
control cost), and for the ant ``reward_contact`` (negative) and ``reward_survive``; they sum to the reward.
"""

from __future__ import annotations

from typing import Any, Literal

import mujoco
import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.registration import register, registry
from gymnasium.utils import EzPickle

__all__ = [
    "HalfCheetahVel", "HalfCheetahDir", "AntVel", "AntDir", "AntGoal",
    "LOCOMOTION_FAMILIES", "LOCOMOTION_IDS", "LOCOMOTION_HORIZON", "register_locomotion",
]

#: Episode horizon of the registrations (MAML paper); the reference PyTorch code uses 100.
LOCOMOTION_HORIZON: int = 200

CHEETAH_CTRL_COST: float = 0.5 * 1e-1
ANT_CTRL_COST: float = 0.5 * 1e-2
ANT_CONTACT_COST: float = 0.5 * 1e-3
ANT_SURVIVE: float = 0.05

Task = dict[str, Any]


def _task_value(task: Any, key: str) -> Any:
    if not isinstance(task, dict) or key not in task:
        raise ValueError(f"a task of this family is a dict with key {key!r}, got {task!r}")
    return task[key]


def _as_direction(task: Any) -> float:
    d = float(_task_value(task, "direction"))
    if d not in (-1.0, 1.0):
        raise ValueError(f"a direction task has direction -1 or +1, got {d}")
    return d


def _as_goal(task: Any) -> np.ndarray:
    goal = np.asarray(_task_value(task, "goal"), dtype=np.float64).reshape(-1)
    if goal.shape != (2,) or not np.all(np.isfinite(goal)):
        raise ValueError(f"a goal task has a finite 2-d goal, got {task['goal']!r}")
    return goal


class _VelocityTask:
    """Task protocol for a scalar target velocity ``{"velocity": float}`` drawn from ``U[low, high]``."""

    _low: float
    _high: float
    _velocity: float | None

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Task]:
        """``num_tasks`` target velocities ``~ U[low, high]`` drawn with ``rng`` only."""
        return [{"velocity": float(v)} for v in rng.uniform(self._low, self._high, size=int(num_tasks))]

    def set_task(self, task: Task) -> None:
        """Set the target velocity; takes effect from the next step."""
        self._velocity = float(_task_value(task, "velocity"))

    def get_task(self) -> Task:
        """The current task."""
        if self._velocity is None:
            raise RuntimeError("no task set yet: call reset() or set_task() first")
        return {"velocity": self._velocity}

    def _default_task(self, rng: np.random.Generator) -> None:
        if self._velocity is None:
            self.set_task(self.sample_tasks(1, rng)[0])


class _DirectionTask:
    """Task protocol for a running direction ``{"direction": -1.0 or +1.0}``, each with probability 1/2."""

    _direction: float | None

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Task]:
        """``num_tasks`` directions, -1 or +1 with probability 1/2 each, drawn with ``rng`` only."""
        return [{"direction": float(2 * d - 1)} for d in rng.integers(0, 2, size=int(num_tasks))]

    def set_task(self, task: Task) -> None:
        """Set the direction; takes effect from the next step."""
        self._direction = _as_direction(task)

    def get_task(self) -> Task:
        """The current task."""
        if self._direction is None:
            raise RuntimeError("no task set yet: call reset() or set_task() first")
        return {"direction": self._direction}

    def _default_task(self, rng: np.random.Generator) -> None:
        if self._direction is None:
            self.set_task(self.sample_tasks(1, rng)[0])


#: Compiled models shared by instances made with ``share_model=True``: ``(xml path, width, height) -> MjModel``.
_SHARED_MODELS: dict[tuple[str, int, int], mujoco.MjModel] = {}


class _SharedModel:
    """``share_model=True``: every instance in the process with the same XML uses one compiled ``MjModel``.

    Each instance keeps its own ``MjData`` (the whole simulation state), so stepping is unchanged; what is
    saved is the model's memory (~0.5 MB each, mostly textures) and, with hundreds of instances stepped in turn
    (:class:`rkmeta_rl.rl.vec_env.BatchedEnvs`), cache traffic. Only for envs that never modify their model
    (these families do not; per-instance model changes such as domain randomisation would leak to all).
    """

    _share_model: bool = False

    def _initialize_simulation(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        if not self._share_model:
            return super()._initialize_simulation()  # type: ignore[misc]
        key = (self.fullpath, int(self.width), int(self.height))  # type: ignore[attr-defined]
        model = _SHARED_MODELS.get(key)
        if model is None:
            model, _ = super()._initialize_simulation()  # type: ignore[misc]
            _SHARED_MODELS[key] = model
        return model, mujoco.MjData(model)


class _TaskReset:
    """``reset(options={"task": task})`` for the MuJoCo families: set the task, then v5's reset."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset the state (v5 noise); ``options={"task": task}`` sets the task first."""
        if options is not None and options.get("task") is not None:
            self.set_task(options["task"])  # type: ignore[attr-defined]
        obs, info = super().reset(seed=seed, options=options)
        self._default_task(self.np_random)  # type: ignore[attr-defined]
        return obs, info


class _CheetahFamily(_TaskReset, _SharedModel, HalfCheetahEnv):
    """HalfCheetah v5 with a task term instead of the forward reward; ``reset(options={"task": ...})``."""

    def __init__(self, ctrl_cost_weight: float = CHEETAH_CTRL_COST, share_model: bool = False,
                 **kwargs: Any) -> None:
        self._share_model = bool(share_model)
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        self._step_dt = float(self.dt)  # fixed after construction; the property costs a call per step

    def _task_term(self, x_velocity: float) -> float:
        raise NotImplementedError

    def _get_obs(self) -> np.ndarray:
        """v5's observation (``qpos[1:]`` or ``qpos``, then ``qvel``; float64), built with one concatenate."""
        qpos = self.data.qpos
        return np.concatenate((qpos[1:] if self._exclude_current_positions_from_observation else qpos,
                               self.data.qvel))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One control step (5 physics steps).

        Args:
            action: ``(6,)`` joint torques (the control cost sees them unclipped; MuJoCo clamps to [-1, 1]).

        Returns:
            ``(obs (17,) float64, reward, terminated=False, truncated=False, info)``; ``info`` has ``x_position``,
            ``x_velocity``, ``reward_task`` and ``reward_ctrl`` (``reward = reward_task + reward_ctrl``).
        """
        a = np.asarray(action, dtype=np.float64)
        qpos = self.data.qpos
        x_before = qpos[0]
        self.do_simulation(a, self.frame_skip)
        x_after = qpos[0]
        x_velocity = (x_after - x_before) / self._step_dt
        task_term = self._task_term(x_velocity)
        ctrl = -self._ctrl_cost_weight * float(a @ a)
        info = {"x_position": x_after, "x_velocity": x_velocity, "reward_task": task_term, "reward_ctrl": ctrl}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), task_term + ctrl, False, False, info


class HalfCheetahVel(_VelocityTask, _CheetahFamily):
    """HalfCheetah running at a target velocity: ``reward = -|v - velocity| - 0.05 |a|^2``.

    Task ``{"velocity": float}`` ~ U[0, 2] (MAML; ``half_cheetah_env_rand.py``, ``half_cheetah.py``). See the
    module docstring for the exact terms.

    Args:
        task: initial task; default: drawn from ``np_random`` at the first reset.
        low, high: the task distribution's range.
        ctrl_cost_weight: ``w`` of ``w * sum(a^2)``.
        **kwargs: Gymnasium ``HalfCheetahEnv`` (v5) keywords.
    """

    def __init__(self, task: Task | None = None, low: float = 0.0, high: float = 2.0,
                 ctrl_cost_weight: float = CHEETAH_CTRL_COST, **kwargs: Any) -> None:
        self._low, self._high = float(low), float(high)
        self._velocity = None
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        if task is not None:
            self.set_task(task)
        EzPickle.__init__(self, task=task, low=low, high=high, ctrl_cost_weight=ctrl_cost_weight, **kwargs)

    def _task_term(self, x_velocity: float) -> float:
        return -abs(x_velocity - self._velocity)  # type: ignore[operator]


class HalfCheetahDir(_DirectionTask, _CheetahFamily):
    """HalfCheetah running forward or backward: ``reward = direction * v - 0.05 |a|^2``.

    Task ``{"direction": -1.0 or +1.0}`` (MAML; ``half_cheetah_env_rand_direc.py``, ``half_cheetah.py``).

    Args:
        task: initial task; default: drawn from ``np_random`` at the first reset.
        ctrl_cost_weight: ``w`` of ``w * sum(a^2)``.
        **kwargs: Gymnasium ``HalfCheetahEnv`` (v5) keywords.
    """

    def __init__(self, task: Task | None = None, ctrl_cost_weight: float = CHEETAH_CTRL_COST,
                 **kwargs: Any) -> None:
        self._direction = None
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        if task is not None:
            self.set_task(task)
        EzPickle.__init__(self, task=task, ctrl_cost_weight=ctrl_cost_weight, **kwargs)

    def _task_term(self, x_velocity: float) -> float:
        return self._direction * x_velocity  # type: ignore[operator]


class _AntFamily(_TaskReset, _SharedModel, AntEnv):
    """Ant v5 with a task term, the references' costs and survival reward; v5 healthy-height termination."""

    def __init__(self, survive_reward: float = ANT_SURVIVE, ctrl_cost_weight: float = ANT_CTRL_COST,
                 contact_cost_weight: float = ANT_CONTACT_COST, share_model: bool = False, **kwargs: Any) -> None:
        self._survive_reward = float(survive_reward)
        self._share_model = bool(share_model)
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, contact_cost_weight=contact_cost_weight, **kwargs)

    def _task_term(self, xy_before: np.ndarray, xy_after: np.ndarray) -> float:
        raise NotImplementedError

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """One control step (5 physics steps).

        Args:
            action: ``(8,)`` hip and ankle torques (the control cost sees them unclipped).

        Returns:
            ``(obs (105,) or (107,) float64, reward, terminated, False, info)``; ``terminated`` when the torso
            height leaves ``healthy_z_range`` (default [0.2, 1.0]); ``info`` has ``x_position``,
            ``y_position``, ``x_velocity``, ``y_velocity`` and ``reward_task``, ``reward_ctrl``,
            ``reward_contact``, ``reward_survive``, which sum to the reward.
        """
        a = np.asarray(action, dtype=np.float64)
        body = self.data.body(self._main_body)
        xy_before = body.xpos[:2].copy()
        self.do_simulation(a, self.frame_skip)
        xy_after = body.xpos[:2].copy()
        xy_velocity = (xy_after - xy_before) / self.dt
        task_term = self._task_term(xy_before, xy_after)
        ctrl = -self._ctrl_cost_weight * float(a @ a)
        contact = -float(self.contact_cost)
        survive = self._survive_reward
        terminated = self._terminate_when_unhealthy and not self.is_healthy
        info = {
            "x_position": self.data.qpos[0], "y_position": self.data.qpos[1],
            "x_velocity": xy_velocity[0], "y_velocity": xy_velocity[1],
            "reward_task": task_term, "reward_ctrl": ctrl, "reward_contact": contact, "reward_survive": survive,
        }
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), task_term + ctrl + contact + survive, bool(terminated), False, info


class AntVel(_VelocityTask, _AntFamily):
    """Ant running forward (+x) at a target velocity: ``reward = -|v - velocity| - costs + 1.05``.

    Task ``{"velocity": float}`` ~ U[0, 3] (MAML; ``ant_env_rand.py``, ``ant.py``).

    Args:
        task: initial task; default: drawn from ``np_random`` at the first reset.
        low, high: the task distribution's range.
        survive_reward: per-step constant (0.05 plus the reference's +1.0 on the task term).
        **kwargs: Gymnasium ``AntEnv`` (v5) keywords (``ctrl_cost_weight``, ``healthy_z_range``, ...).
    """

    def __init__(self, task: Task | None = None, low: float = 0.0, high: float = 3.0,
                 survive_reward: float = ANT_SURVIVE + 1.0, **kwargs: Any) -> None:
        self._low, self._high = float(low), float(high)
        self._velocity = None
        super().__init__(survive_reward=survive_reward, **kwargs)
        if task is not None:
            self.set_task(task)
        EzPickle.__init__(self, task=task, low=low, high=high, survive_reward=survive_reward, **kwargs)

    def _task_term(self, xy_before: np.ndarray, xy_after: np.ndarray) -> float:
        return -abs(float(xy_after[0] - xy_before[0]) / self.dt - self._velocity)  # type: ignore[operator]


class AntDir(_DirectionTask, _AntFamily):
    """Ant running forward or backward along x: ``reward = direction * v - costs + 0.05``.

    Task ``{"direction": -1.0 or +1.0}`` (MAML; ``ant_env_rand_direc.py``, ``ant.py``).

    Args:
        task: initial task; default: drawn from ``np_random`` at the first reset.
        survive_reward: per-step constant.
        **kwargs: Gymnasium ``AntEnv`` (v5) keywords.
    """

    def __init__(self, task: Task | None = None, survive_reward: float = ANT_SURVIVE, **kwargs: Any) -> None:
        self._direction = None
        super().__init__(survive_reward=survive_reward, **kwargs)
        if task is not None:
            self.set_task(task)
        EzPickle.__init__(self, task=task, survive_reward=survive_reward, **kwargs)

    def _task_term(self, xy_before: np.ndarray, xy_after: np.ndarray) -> float:
        return self._direction * float(xy_after[0] - xy_before[0]) / self.dt  # type: ignore[operator]


class AntGoal(_AntFamily):
    """Ant walking to a goal position in the plane: ``reward = -|xy - goal|_1 - costs + 4.05``.

    Task ``{"goal": array (2,)}`` ~ U[-3, 3]^2 (MAML; ``ant_env_rand_goal.py``). The torso ``x, y`` are part of
    the observation (107 entries).

    Args:
        task: initial task; default: drawn from ``np_random`` at the first reset.
        low, high: the goal distribution's range (per coordinate).
        goal_distance: ``"l1"`` (references) or ``"l2"``.
        survive_reward: per-step constant (0.05 plus the reference's +4.0 on the task term).
        exclude_current_positions_from_observation: v5 keyword; False here so that the ant sees its position.
        **kwargs: Gymnasium ``AntEnv`` (v5) keywords.
    """

    def __init__(self, task: Task | None = None, low: float = -3.0, high: float = 3.0,
                 goal_distance: Literal["l1", "l2"] = "l1", survive_reward: float = ANT_SURVIVE + 4.0,
                 exclude_current_positions_from_observation: bool = False, **kwargs: Any) -> None:
        if goal_distance not in ("l1", "l2"):
            raise ValueError(f"goal_distance must be 'l1' or 'l2', got {goal_distance!r}")
        self._low, self._high = float(low), float(high)
        self._goal_distance = goal_distance
        self._goal: np.ndarray | None = None
        super().__init__(survive_reward=survive_reward,
                         exclude_current_positions_from_observation=exclude_current_positions_from_observation,
                         **kwargs)
        if task is not None:
            self.set_task(task)
        EzPickle.__init__(self, task=task, low=low, high=high, goal_distance=goal_distance,
                          survive_reward=survive_reward,
                          exclude_current_positions_from_observation=exclude_current_positions_from_observation,
                          **kwargs)

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[Task]:
        """``num_tasks`` goals ``~ U[low, high]^2`` drawn with ``rng`` only."""
        return [{"goal": g} for g in rng.uniform(self._low, self._high, size=(int(num_tasks), 2))]

    def set_task(self, task: Task) -> None:
        """Set the goal; takes effect from the next step."""
        self._goal = _as_goal(task)

    def get_task(self) -> Task:
        """The current task (a copy)."""
        if self._goal is None:
            raise RuntimeError("no task set yet: call reset() or set_task() first")
        return {"goal": self._goal.copy()}

    def _default_task(self, rng: np.random.Generator) -> None:
        if self._goal is None:
            self.set_task(self.sample_tasks(1, rng)[0])

    def _task_term(self, xy_before: np.ndarray, xy_after: np.ndarray) -> float:
        d = xy_after - self._goal
        if self._goal_distance == "l1":
            return -float(np.abs(d).sum())
        return -float(np.sqrt(d @ d))


#: Family name -> class.
LOCOMOTION_FAMILIES: dict[str, type] = {
    "HalfCheetahVel": HalfCheetahVel, "HalfCheetahDir": HalfCheetahDir,
    "AntVel": AntVel, "AntDir": AntDir, "AntGoal": AntGoal,
}

#: Family name -> Gymnasium id.
LOCOMOTION_IDS: dict[str, str] = {name: f"rkmeta/{name}-v0" for name in LOCOMOTION_FAMILIES}


def register_locomotion(max_episode_steps: int = LOCOMOTION_HORIZON) -> list[str]:
    """Register every family as ``rkmeta/<Name>-v0``; ids already registered are left alone (idempotent).

    Args:
        max_episode_steps: the horizon of the registrations (``gymnasium.make(id, max_episode_steps=100)``
            overrides it per instance).

    Returns:
        The ids, in :data:`LOCOMOTION_IDS` order.
    """
    for name, env_id in LOCOMOTION_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=f"rkmeta_rl.envs.locomotion:{name}",
                     max_episode_steps=int(max_episode_steps))
    return list(LOCOMOTION_IDS.values())
