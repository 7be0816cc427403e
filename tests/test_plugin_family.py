"""Plugging in a new task family with no library change (docs/task_families.md): a pendulum whose mass varies per
task, defined and registered here, meta-trained by ``MetaTRPO`` and by ``scripts/train_locomotion.py --module``;
families that break the protocol are refused with errors that say what is wrong."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from conftest import load_script
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from rkmeta_rl.envs.protocol import TaskFamilyError
from rkmeta_rl.rl.algorithm import MetaTRPO
from rkmeta_rl.rl.sampler import BatchedSampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PENDULUM_ID = "testfam/MassPendulum-v0"


class MassPendulum(PendulumEnv):
    """Gymnasium's pendulum; each task is a pole mass ``{"mass": m}``, m ~ U[0.5, 2]."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.m = 1.0

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, float]]:
        return [{"mass": float(m)} for m in rng.uniform(0.5, 2.0, size=int(num_tasks))]

    def set_task(self, task: dict[str, float]) -> None:
        self.m = float(task["mass"])

    def get_task(self) -> dict[str, float]:
        return {"mass": self.m}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if options and options.get("task") is not None:
            self.set_task(options["task"])
        return super().reset(seed=seed, options=None)


class NoSetTask(PendulumEnv):
    """Breaks the protocol: no ``set_task``, and ``reset`` ignores the task."""

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, float]]:
        return [{"mass": float(m)} for m in rng.uniform(0.5, 2.0, size=int(num_tasks))]

    def get_task(self) -> dict[str, float]:
        return {"mass": self.m}


class WrongCount(MassPendulum):
    """Breaks the protocol: ``sample_tasks`` returns one task whatever is asked."""

    def sample_tasks(self, num_tasks: int, rng: np.random.Generator) -> list[dict[str, float]]:
        return super().sample_tasks(1, rng)


class ShortLivedPendulum(MassPendulum):
    """Episodes terminate after a random number (2 to 7) of steps drawn at reset from ``np_random``."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        out = super().reset(seed=seed, options=options)
        self._left = int(self.np_random.integers(2, 8))
        return out

    def step(self, action: np.ndarray):
        obs, r, _, trunc, info = super().step(action)
        self._left -= 1
        return obs, r, self._left <= 0, trunc, info


class NaNRewardPendulum(MassPendulum):
    """Breaks the protocol: every reward is NaN (the same Python object each step, so lists of them compare equal)."""

    def step(self, action: np.ndarray):
        obs, _, term, trunc, info = super().step(action)
        return obs, math.nan, term, trunc, info


for _id, _cls in ((PENDULUM_ID, MassPendulum), ("testfam/NoSetTask-v0", NoSetTask),
                  ("testfam/WrongCount-v0", WrongCount), ("testfam/ShortLived-v0", ShortLivedPendulum),
                  ("testfam/NaNReward-v0", NaNRewardPendulum)):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_cls, max_episode_steps=200)

TINY = dict(meta_batch_size=2, fast_batch_size=2, horizon=10, policy_kwargs={"hidden_sizes": (8,)})


def test_new_family_meta_trains() -> None:
    model = MetaTRPO("MlpPolicy", PENDULUM_ID, method="ralston", seed=0, **TINY)
    assert isinstance(model.sampler, BatchedSampler) and model.sampler.horizon == 10
    assert "share_model" not in model.sampler.env_kwargs  # not a MuJoCo family
    seen: list[dict[str, float]] = []
    model.learn(2, callback=lambda m, s: seen.append(s))
    assert model.num_iterations == 2 and model.num_timesteps == 2 * 2 * 2 * 2 * 10
    assert all(math.isfinite(v) for s in seen for v in s.values())
    # tasks reach the envs: the pendulums of task 0 and task 1 carry their own masses
    tasks = model.sampler.sample_tasks(2, np.random.default_rng(1))
    model.sampler.sample(tasks, model.policy.params(), 2)
    envs = model.sampler._envs[4]
    assert [e.unwrapped.get_task() for e in envs._local.wrapped] == [tasks[0]] * 2 + [tasks[1]] * 2
    model.close()


def test_episodes_end_independently() -> None:
    import torch

    from rkmeta_rl.rl.policy import GaussianMLPPolicy
    from rkmeta_rl.rl.sampler import GymSampler

    pol = GaussianMLPPolicy(3, 1, (8,), generator=torch.Generator().manual_seed(0))
    bs = BatchedSampler("testfam/ShortLived-v0", pol, horizon=10, seed=2)
    tasks = bs.sample_tasks(3, np.random.default_rng(0))
    eps = bs.sample(tasks, pol.params(), 4, torch.Generator().manual_seed(0))
    m = eps.masks
    lengths = m.sum(1)
    assert lengths.min() >= 2 and lengths.max() <= 7 and len(set(lengths.flatten().tolist())) > 1
    assert torch.all(m[:, 1:] <= m[:, :-1])  # 1 up to and including the ending step, then 0
    dead = m == 0
    assert not eps.obs[dead].any() and not eps.actions[dead].any() and not eps.rewards[dead].any()
    assert not eps.log_probs[dead].any()
    # one task: identical to the reference loop, early ends included
    gs = GymSampler("testfam/ShortLived-v0", pol, horizon=10, seed=5)
    bs1 = BatchedSampler("testfam/ShortLived-v0", pol, horizon=10, seed=5)
    a = bs1.sample(tasks[:1], pol.params(), 4, torch.Generator().manual_seed(1))
    b = gs.sample(tasks[:1], pol.params(), 4, torch.Generator().manual_seed(1))
    for k in ("obs", "actions", "rewards", "masks", "log_probs"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k


def test_new_family_through_the_script_with_module(tmp_path) -> None:
    script = load_script("train_locomotion")
    m = script.main(["--env", PENDULUM_ID, "--module", __name__, "--method", "midpoint", "--iterations", "2",
                     "--meta-batch-size", "2", "--fast-batch-size", "2", "--horizon", "10", "--hidden-sizes", "8",
                     "--no-progress", "--logdir", str(tmp_path)])  # videos: skipped (not a MuJoCo env)
    assert m["iterations"] == 2 and m["env"] == PENDULUM_ID
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == "midpoint"


def test_unregistered_id_suggests_module() -> None:
    with pytest.raises(TaskFamilyError, match=r"not a registered.*--module"):
        MetaTRPO("MlpPolicy", "testfam/Unknown-v0", **TINY)


def test_missing_set_task_is_named() -> None:
    with pytest.raises(TaskFamilyError, match=r"NoSetTask has no set_task\(task\)"):
        MetaTRPO("MlpPolicy", "testfam/NoSetTask-v0", **TINY)


def test_nan_rewards_are_called_nan() -> None:
    from rkmeta_rl.envs.protocol import validate_task_family

    with pytest.raises(TaskFamilyError, match=r"^the step 0 reward is NaN for task \{'mass': [0-9.]+\}"):
        validate_task_family("testfam/NaNReward-v0")
    with pytest.raises(TaskFamilyError, match="NaN") as err:
        MetaTRPO("MlpPolicy", "testfam/NaNReward-v0", **TINY)
    assert "different rewards" not in str(err.value)


def test_wrong_task_count_is_named() -> None:
    with pytest.raises(TaskFamilyError, match=r"sample_tasks\(3, rng\) returned 1 tasks"):
        MetaTRPO("MlpPolicy", "testfam/WrongCount-v0", **TINY)
    # without the up-front check, the sampler still refuses the wrong count when it is used
    model = MetaTRPO("MlpPolicy", "testfam/WrongCount-v0", check_env=False, **TINY)
    with pytest.raises(TaskFamilyError, match=r"sample_tasks\(2, rng\) returned 1 tasks"):
        model.train_iteration()
