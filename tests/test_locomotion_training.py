"""Batched sampler for any family, and ``scripts/train_locomotion.py``: metrics, TensorBoard scalars and videos,
exact resume (videos included), flag and env errors."""

from __future__ import annotations

import json
import os

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import load_script

from rkmeta_rl.envs.locomotion import LOCOMOTION_IDS
from rkmeta_rl.logger import read_scalars
from rkmeta_rl.rl.policy import GaussianMLPPolicy
from rkmeta_rl.rl.sampler import BatchedSampler, GymSampler, TwinSampler, make_sampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VEL = LOCOMOTION_IDS["HalfCheetahVel"]


train_locomotion = load_script("train_locomotion")
TINY = ["--env", "HalfCheetahDir", "--meta-batch-size", "2", "--fast-batch-size", "2", "--horizon", "20",
        "--hidden-sizes", "16,16", "--no-progress", "--checkpoint-interval", "1", "--video-tasks", "2",
        "--video-size", "64x48", "--video-every", "4"]


def _policy() -> GaussianMLPPolicy:
    return GaussianMLPPolicy(17, 6, (8,), generator=torch.Generator().manual_seed(0))


# ---- sampler ------------------------------------------------------------------------------------------------
def test_make_sampler_picks() -> None:
    pol = _policy()
    s = make_sampler(VEL, pol, horizon=5)
    assert isinstance(s, BatchedSampler) and s.env_kwargs == {"share_model": True} and s.horizon == 5
    assert isinstance(make_sampler(VEL, pol, horizon=5, sampler="gym"), GymSampler)
    nav = GaussianMLPPolicy(2, 2, (4,))
    assert isinstance(make_sampler("rkmeta/Navigation2D-v0", nav), TwinSampler)
    assert isinstance(make_sampler("rkmeta/Navigation2D-v0", nav, sampler="batched"), BatchedSampler)
    with pytest.raises(ValueError, match="sampler must be one of"):
        make_sampler(VEL, pol, sampler="fast")


def test_batched_equals_gym_sampler_for_one_task() -> None:
    """Same seeds, same generator: one task's episodes are identical (same env seeds, same noise draws)."""
    pol = _policy()
    bs, gs = BatchedSampler(VEL, pol, horizon=15, seed=3), GymSampler(VEL, pol, horizon=15, seed=3)
    tasks = bs.sample_tasks(1, np.random.default_rng(0))
    for _ in range(2):  # the second call reuses the kept env instances
        a = bs.sample(tasks, pol.params(), 3, torch.Generator().manual_seed(1))
        b = gs.sample(tasks, pol.params(), 3, torch.Generator().manual_seed(1))
        for k in ("obs", "actions", "rewards", "masks", "log_probs"):
            assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert a.obs.shape == (1, 15, 3, 17) and len(bs._envs) == 1
    bs.close()


def test_batched_sampler_replays_per_task_params() -> None:
    """Two tasks with per-task parameters: each (task, trajectory) replays exactly through a fresh env reset with
    the sampler's seed, and the stored log-probabilities are those of the task's own parameters."""
    pol = _policy()
    t_, b_, h_ = 2, 2, 12
    bs = BatchedSampler(VEL, pol, horizon=h_, seed=5)
    tasks = [{"velocity": 0.3}, {"velocity": 1.7}]
    pt = {k: torch.stack([v.detach() + 0.05 * i for i in range(t_)]) for k, v in pol.params().items()}
    seeds = [int(s) for s in (lambda r: [r.integers(2**31) for _ in range(t_ * b_)])(np.random.default_rng(5))]
    eps = bs.sample(tasks, pt, b_, torch.Generator().manual_seed(2))
    assert eps.obs.shape == (t_, h_, b_, 17) and float(eps.masks.sum()) == t_ * h_ * b_
    for i in range(t_):
        p_i = {k: v[i] for k, v in pt.items()}
        torch.testing.assert_close(eps.log_probs[i], pol.log_prob(p_i, eps.obs[i], eps.actions[i]))
        for b in range(b_):
            env = gym.make(VEL)
            o, _ = env.reset(seed=seeds[i * b_ + b], options={"task": tasks[i]})
            for t in range(h_):
                assert np.array_equal(np.float32(o), eps.obs[i, t, b].numpy())
                o, r, _, _, _ = env.step(eps.actions[i, t, b].numpy())
                assert np.float32(r) == eps.rewards[i, t, b].item()
    # a fresh sampler continuing from the saved seed stream gives what the kept one gives (exact resume)
    state = bs.seed_rng.bit_generator.state
    nxt = bs.sample(tasks, pt, b_, torch.Generator().manual_seed(3))
    fresh = BatchedSampler(VEL, pol, horizon=h_, seed=0)
    fresh.seed_rng.bit_generator.state = state
    again = fresh.sample(tasks, pt, b_, torch.Generator().manual_seed(3))
    assert torch.equal(nxt.obs, again.obs) and torch.equal(nxt.rewards, again.rewards)


def test_batched_sampler_workers_same_episodes() -> None:
    pol = _policy()
    tasks = [{"velocity": 0.5}, {"velocity": 1.5}]
    one = BatchedSampler(VEL, pol, horizon=8, seed=1)
    two = BatchedSampler(VEL, pol, horizon=8, seed=1, num_workers=2)
    try:
        a = one.sample(tasks, pol.params(), 2, torch.Generator().manual_seed(0))
        b = two.sample(tasks, pol.params(), 2, torch.Generator().manual_seed(0))
        assert torch.equal(a.obs, b.obs) and torch.equal(a.rewards, b.rewards)
    finally:
        one.close()
        two.close()


# ---- the script ---------------------------------------------------------------------------------------------
def _params(logdir: str) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(logdir, "checkpoint_final.pt"), weights_only=True)["params"]


def test_train_locomotion_metrics_scalars_and_videos(tmp_path) -> None:
    m = train_locomotion.main([*TINY, "--method", "ralston", "--iterations", "2", "--video-interval", "2",
                               "--logdir", str(tmp_path)])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("method", "iterations", "pre_return", "post_return", "seconds", "sample_seconds_per_iteration",
                "update_seconds_per_iteration"):
        assert key in on_disk, key
    assert on_disk["iterations"] == 2 and m["method"] == "ralston" and m["env"] == LOCOMOTION_IDS["HalfCheetahDir"]
    assert m["horizon"] == 20 and m["env_steps"] == 2 * (2 * 2 * 20) * 2  # iterations x (tasks x traj x H) x (D0, D1)
    scalars = read_scalars(str(tmp_path))
    for key in ("rollout/pre_return", "rollout/post_return", "rollout/pre_ep_len", "train/kl",
                "time/sample_seconds", "time/update_seconds"):
        assert [s for s, _ in scalars[key]] == [1, 2], key
    assert scalars["rollout/pre_ep_len"][0][1] == 20
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    for tag in ("video/pre_adaptation", "video/post_adaptation"):
        events = acc.Images(tag)
        assert [e.step for e in events] == [1, 2], tag
        gif = events[0].encoded_image_string
        assert gif[:6] in (b"GIF87a", b"GIF89a") and events[0].width == 2 * 64 + 2 and events[0].height == 48


def test_resume_is_exact_and_videos_do_not_perturb(tmp_path) -> None:
    # straight: 3 iterations, no videos; split: 2 iterations, then resumed to 3, videos every iteration
    train_locomotion.main([*TINY, "--method", "midpoint", "--iterations", "3", "--video-interval", "0",
                           "--logdir", str(tmp_path / "ref")])
    train_locomotion.main([*TINY, "--method", "midpoint", "--iterations", "2", "--video-interval", "1",
                           "--logdir", str(tmp_path / "b")])
    m = train_locomotion.main([*TINY, "--method", "midpoint", "--iterations", "3", "--video-interval", "1",
                               "--logdir", str(tmp_path / "b"), "--resume"])
    ref, got = _params(str(tmp_path / "ref")), _params(str(tmp_path / "b"))
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert m["iterations"] == 3 and len(m["history"]["pre_return"]) == 3
    ref_m = json.loads((tmp_path / "ref" / "metrics.json").read_text())
    assert ref_m["history"]["post_return"] == m["history"]["post_return"]


@pytest.mark.parametrize("flags,msg", [
    (["--env", "HalfCheetahVell"], "HalfCheetahVel"), (["--env", "nobody/Nothing-v0"], "--module"),
    (["--module", "no_such_module_xyz"], "cannot import"), (["--method", "rk4"], "one- and two-stage"),
    (["--horizon", "0"], "horizon"), (["--fvp-subsample", "0"], "--fvp-subsample must"),
    (["--video-interval", "-1"], "--video-interval must"), (["--hidden-sizes", "a,b"], "hidden-sizes"),
])
def test_bad_flags_fail_before_work(tmp_path, flags, msg) -> None:
    with pytest.raises(SystemExit) as err:
        train_locomotion.main([*TINY, "--iterations", "1", *flags, "--logdir", str(tmp_path)])
    assert msg in str(err.value)
    assert not os.path.exists(tmp_path / "progress.csv")


def test_resume_refuses_other_settings(tmp_path) -> None:
    train_locomotion.main([*TINY, "--iterations", "1", "--video-interval", "0", "--logdir", str(tmp_path)])
    with pytest.raises(SystemExit, match="horizon"):
        train_locomotion.main([*TINY, "--iterations", "2", "--horizon", "10", "--logdir", str(tmp_path),
                               "--resume"])
    with pytest.raises(SystemExit, match="HalfCheetahDir"):
        train_locomotion.main([*TINY, "--iterations", "2", "--env", "HalfCheetahVel", "--logdir", str(tmp_path),
                               "--resume"])
