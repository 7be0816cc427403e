"""MuJoCo locomotion task families: Gymnasium checker, reward terms, tasks, horizons, and protocol validation."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

from rkmeta_rl.envs.locomotion import LOCOMOTION_IDS, register_locomotion
from rkmeta_rl.envs.protocol import TaskFamilyError, validate_task_family

register_locomotion()
IDS = list(LOCOMOTION_IDS.values())


def test_register_idempotent() -> None:
    assert register_locomotion() == IDS
    assert register_locomotion() == IDS
    for env_id in IDS:
        assert gym.spec(env_id).max_episode_steps == 200


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_and_protocol(env_id: str) -> None:
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test, except v5's unbounded Box
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value is")
        check_env(env.unwrapped, skip_render_check=True)
    report = validate_task_family(env_id)
    assert report.horizon == 200 and report.uses_set_task and len(report.tasks) == 3


@pytest.mark.parametrize("env_id", IDS)
def test_reward_terms_sum_to_reward(env_id: str) -> None:
    env = gym.make(env_id)
    base = env.unwrapped
    task = base.sample_tasks(1, np.random.default_rng(3))[0]
    env.reset(seed=0, options={"task": task})
    rng = np.random.default_rng(0)
    for _ in range(10):
        a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        xy_before = base.data.body(1).xpos[:2].copy()
        _, r, terminated, _, info = env.step(a)
        terms = {k: v for k, v in info.items() if k.startswith("reward_")}
        assert r == pytest.approx(sum(terms.values()), abs=1e-12)
        a64 = a.astype(np.float64)
        if "Cheetah" in env_id:
            assert set(terms) == {"reward_task", "reward_ctrl"}
            assert terms["reward_ctrl"] == pytest.approx(-0.05 * float(a64 @ a64))
            v = info["x_velocity"]
        else:
            assert set(terms) == {"reward_task", "reward_ctrl", "reward_contact", "reward_survive"}
            assert terms["reward_ctrl"] == pytest.approx(-0.005 * float(a64 @ a64))
            forces = np.clip(base.data.cfrc_ext, -1, 1)
            assert terms["reward_contact"] == pytest.approx(-0.0005 * float(np.sum(forces**2)))
            v = (base.data.body(1).xpos[0] - xy_before[0]) / base.dt
            assert v == pytest.approx(info["x_velocity"])
        if "Vel" in env_id:
            assert terms["reward_task"] == pytest.approx(-abs(v - task["velocity"]))
        elif "Dir" in env_id:
            assert terms["reward_task"] == pytest.approx(task["direction"] * v)
        else:
            xy = base.data.body(1).xpos[:2]
            assert terms["reward_task"] == pytest.approx(-np.abs(xy - task["goal"]).sum())
        if "Ant" in env_id:
            survive = {"AntVel": 1.05, "AntDir": 0.05, "AntGoal": 4.05}[env_id.split("/")[1][:-3]]
            assert terms["reward_survive"] == pytest.approx(survive)
        if terminated:
            break


@pytest.mark.parametrize("env_id", IDS)
def test_tasks_change_rewards_not_dynamics(env_id: str) -> None:
    env = gym.make(env_id)
    base = env.unwrapped
    tasks = {"velocity": [{"velocity": 0.2}, {"velocity": 1.7}], "direction": [{"direction": -1.0},
             {"direction": 1.0}], "goal": [{"goal": np.array([2.0, -1.0])}, {"goal": np.array([-2.5, 0.5])}]}
    key = "velocity" if "Vel" in env_id else "direction" if "Dir" in env_id else "goal"
    acts = np.random.default_rng(1).uniform(-1, 1, (5, *env.action_space.shape)).astype(np.float32)
    runs = []
    for task in tasks[key]:
        obs0, _ = env.reset(seed=7, options={"task": task})
        assert base.get_task().keys() == task.keys()
        steps = [env.step(a) for a in acts]
        runs.append((obs0, [s[0] for s in steps], [s[1] for s in steps]))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for o0, o1 in zip(runs[0][1], runs[1][1]):  # the task is in the reward only
        np.testing.assert_array_equal(o0, o1)
    assert all(r0 != r1 for r0, r1 in zip(runs[0][2], runs[1][2]))


def test_sample_tasks_distributions() -> None:
    rng = np.random.default_rng(0)
    for name, env_id in LOCOMOTION_IDS.items():
        base = gym.make(env_id).unwrapped
        tasks = base.sample_tasks(200, rng)
        assert isinstance(tasks, list) and len(tasks) == 200
        if name.endswith("Vel"):
            v = np.array([t["velocity"] for t in tasks])
            hi = 2.0 if "Cheetah" in name else 3.0
            assert v.min() >= 0.0 and v.max() <= hi and v.max() > 0.9 * hi
        elif name.endswith("Dir"):
            d = np.array([t["direction"] for t in tasks])
            assert set(d.tolist()) == {-1.0, 1.0}
        else:
            g = np.stack([t["goal"] for t in tasks])
            assert g.shape == (200, 2) and np.all(np.abs(g) <= 3.0) and g.min() < -2.5 and g.max() > 2.5
    with pytest.raises(ValueError, match="direction"):
        gym.make(LOCOMOTION_IDS["AntDir"]).unwrapped.set_task({"direction": 0.5})
    with pytest.raises(ValueError, match="velocity"):
        gym.make(LOCOMOTION_IDS["HalfCheetahVel"]).unwrapped.set_task({"goal": 1.0})


def test_horizon_flag_and_ant_termination() -> None:
    env = gym.make(LOCOMOTION_IDS["HalfCheetahVel"], max_episode_steps=100)
    env.reset(seed=0)
    zero = np.zeros(env.action_space.shape, np.float32)
    for t in range(1, 101):
        _, _, terminated, truncated, _ = env.step(zero)
        assert not terminated and truncated == (t == 100)
    # ant: v5 healthy-height termination, torso z outside [0.2, 1.0]
    ant = gym.make(LOCOMOTION_IDS["AntDir"])
    ant.reset(seed=0)
    base = ant.unwrapped
    qpos, qvel = base.data.qpos.copy(), base.data.qvel.copy()
    qpos[2] = 1.5
    base.set_state(qpos, qvel)
    _, _, terminated, truncated, _ = ant.step(np.zeros(8, np.float32))
    assert terminated and not truncated


def test_goal_in_observation_and_pickle() -> None:
    env = gym.make(LOCOMOTION_IDS["AntGoal"], goal_distance="l2")
    assert env.observation_space.shape == (107,)
    obs, _ = env.reset(seed=0, options={"task": {"goal": [1.0, 2.0]}})
    np.testing.assert_array_equal(obs[:2], env.unwrapped.data.qpos[:2])
    clone = pickle.loads(pickle.dumps(env.unwrapped))
    assert clone._goal_distance == "l2" and clone.observation_space.shape == (107,)


def test_shared_model() -> None:
    a = gym.make(LOCOMOTION_IDS["HalfCheetahDir"], share_model=True).unwrapped
    b = gym.make(LOCOMOTION_IDS["HalfCheetahDir"], share_model=True).unwrapped
    c = gym.make(LOCOMOTION_IDS["HalfCheetahDir"]).unwrapped
    assert a.model is b.model and a.data is not b.data and c.model is not a.model


# ---- protocol validation errors -------------------------------------------------------------------------
class _Family(gym.Env):
    """A tiny 1-d family: reward = -|x - goal|; subclasses break one rule each."""

    observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float64)
    action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self) -> None:
        self.goal = 0.0
        self.x = np.zeros(1)

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list:
        return [{"goal": float(g)} for g in rng.uniform(-1, 1, num_tasks)]

    def set_task(self, task: dict) -> None:
        self.goal = float(task["goal"])

    def get_task(self) -> dict:
        return {"goal": self.goal}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self.x = self.np_random.uniform(-0.1, 0.1, 1)
        return self.x.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.x = self.x + np.asarray(action, np.float64)
        return self.x.copy(), -abs(float(self.x[0]) - self._reward_goal()), False, False, {}

    def _reward_goal(self) -> float:
        return self.goal


class _NoGetSetTask(_Family):
    get_task = None  # type: ignore[assignment]
    set_task = None  # type: ignore[assignment]


class _WrongCount(_Family):
    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list:
        return super().sample_tasks(num_tasks - 1, rng)


class _NotAList(_Family):
    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list:
        return np.array([t["goal"] for t in super().sample_tasks(num_tasks, rng)])  # type: ignore[return-value]


class _GlobalRandom(_Family):
    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list:
        return [{"goal": float(g)} for g in np.random.uniform(-1, 1, num_tasks)]


class _TaskIgnored(_Family):
    def _reward_goal(self) -> float:
        return 0.0


def test_validation_accepts_a_good_family() -> None:
    report = validate_task_family(_Family())
    assert report.env_id is None and report.obs_shape == (1,)


@pytest.mark.parametrize("cls, pattern", [
    (_NoGetSetTask, r"lacks set_task\(\), get_task\(\)"),
    (_WrongCount, r"returned 2 tasks"),
    (_NotAList, r"must return a list, got ndarray"),
    (_GlobalRandom, r"draw only from the rng"),
    (_TaskIgnored, r"does not change the dynamics or the reward"),
])
def test_validation_errors(cls: type, pattern: str) -> None:
    with pytest.raises(TaskFamilyError, match=pattern):
        validate_task_family(cls())


def test_validation_unregistered_id() -> None:
    with pytest.raises(TaskFamilyError, match=r"not a registered.*HalfCheetahVel-v0.*--module"):
        validate_task_family("rkmeta/HalfCheetahVell-v0")
