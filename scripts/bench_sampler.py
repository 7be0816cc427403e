#!/usr/bin/env python
"""Benchmark: batched meta-batch sampling (BatchedEnvs + policy) against raw single-env MuJoCo stepping.

Measures, interleaved in rounds (median reported, the machine may be shared):

1. ``raw_env_steps_per_s``: one env instance (``env.unwrapped.step``, the family's reward and observation
   included, no wrappers) stepped with pre-drawn uniform random actions, reset at the horizon / termination;
2. ``sampler_steps_per_s``: :meth:`rkmeta_rl.rl.vec_env.BatchedEnvs.collect` of a meta-batch
   (``--tasks`` x ``--traj`` environments, each task on its own ``--traj`` envs, horizon ``--horizon``) with a
   2x100 ReLU Gaussian MLP policy (:class:`rkmeta_rl.rl.policy.GaussianMLPPolicy`) sampling actions and
   log-probabilities in one batched forward per time step; reset included, env construction not; the
   locomotion families share one compiled MjModel (``share_model=True``; ``--no-share-model`` to compare);
3. ``efficiency = sampler_steps_per_s / (raw_env_steps_per_s x workers)``: the fraction of time the
   sampler spends on physics and the env's own Python (target >= 0.8).

Rates are per second of this process's CPU time (``time.process_time``), so that other jobs on a shared
machine do not skew them; with ``--workers > 1`` they are per second of wall time.

    python scripts/bench_sampler.py --env HalfCheetahVel [--tasks 40 --traj 20 --horizon 200] [--workers 1]
    python scripts/bench_sampler.py --env AntVel --tasks 10 --traj 10 --profile

Last line: JSON with ``raw_env_steps_per_s``, ``sampler_steps_per_s``, ``efficiency`` and the settings, plus
the diagnostic ``raw_batched_env_steps_per_s``: the sampler's ``N`` instances stepped in a bare loop (random
actions, no policy, no bookkeeping). Its gap to ``raw_env_steps_per_s`` is MuJoCo's own cost of cycling
through ``N`` simulation states (cache misses), which no Python optimisation removes;
``efficiency_vs_batched_raw`` is the share left to the policy and the bookkeeping.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import statistics
import sys
import time
from typing import Callable

import gymnasium as gym
import numpy as np
import torch

from rkmeta_rl.envs.locomotion import LOCOMOTION_IDS, register_locomotion
from rkmeta_rl.rl.policy import GaussianMLPPolicy
from rkmeta_rl.rl.vec_env import BatchedEnvs


def raw_rate(env: gym.Env, steps: int, horizon: int, seed: int, clock: Callable[[], float]) -> float:
    """Steps per second of ``env.unwrapped.step`` with uniform random actions (reset at episode ends)."""
    base = env.unwrapped
    space = env.action_space
    acts = np.random.default_rng(seed).uniform(space.low, space.high, size=(steps, *space.shape)).astype(space.dtype)
    step = base.step
    base.reset(seed=seed)
    t_ep = 0
    t0 = clock()
    for a in acts:
        _, _, term, trunc, _ = step(a)
        t_ep += 1
        if term or trunc or t_ep >= horizon:
            base.reset()
            t_ep = 0
    return steps / (clock() - t0)


def batched_raw_rate(envs: BatchedEnvs, steps: int, seed: int, clock: Callable[[], float]) -> float:
    """Steps per second of the sampler's own env instances stepped in turn, uniform random actions, no policy
    and no batching bookkeeping (in-process only): the physics cost of cycling through ``N`` instances."""
    assert envs._local is not None
    bases = envs._local.envs
    space = envs._local.wrapped[0].action_space
    rounds = max(1, steps // len(bases))
    acts = np.random.default_rng(seed).uniform(space.low, space.high, size=(rounds, len(bases), *space.shape))
    acts = acts.astype(space.dtype)
    for e in bases:
        e.reset(seed=seed)
    t0 = clock()
    for r in range(rounds):
        for e, a in zip(bases, acts[r]):
            _, _, term, _, _ = e.step(a)
            if term:
                e.reset()
    return rounds * len(bases) / (clock() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetahVel", help="family name (HalfCheetahVel, AntGoal, ...) or an id")
    p.add_argument("--tasks", type=int, default=40)
    p.add_argument("--traj", type=int, default=20)
    p.add_argument("--horizon", type=int, default=200)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--raw-steps", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-share-model", action="store_true",
                   help="one compiled MjModel per env instead of one shared by all (locomotion families)")
    p.add_argument("--profile", action="store_true", help="cProfile one collect; top functions to stderr")
    args = p.parse_args()
    torch.set_num_threads(1)
    register_locomotion()
    env_id = LOCOMOTION_IDS.get(args.env, args.env)

    single = gym.make(env_id)
    n = args.tasks * args.traj
    t0 = time.perf_counter()
    env_kwargs = {} if args.no_share_model or env_id not in LOCOMOTION_IDS.values() else {"share_model": True}
    envs = BatchedEnvs(env_id, n, horizon=args.horizon, num_workers=args.workers, seed=args.seed,
                       env_kwargs=env_kwargs)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    policy = GaussianMLPPolicy(int(np.prod(envs.obs_shape)), int(np.prod(envs.act_shape)), (100, 100), "relu",
                               generator=torch.Generator().manual_seed(args.seed))
    params = {k: v.detach() for k, v in policy.params().items()}
    gen = torch.Generator().manual_seed(args.seed)

    def policy_fn(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return policy.sample(params, obs, generator=gen)

    # CPU time of this process: robust on a shared machine; wall time when workers do the stepping
    clock = time.process_time if envs.num_workers == 1 else time.perf_counter
    raw, sampler, ep_len, batched_raw = [], [], [], []
    for r in range(args.rounds):
        raw.append(raw_rate(single, args.raw_steps, args.horizon, args.seed + r, clock))
        if envs.num_workers == 1:
            batched_raw.append(batched_raw_rate(envs, args.raw_steps, args.seed + r, clock))
        envs.set_tasks(envs.sample_tasks(args.tasks, rng), args.traj)
        t0, w0 = clock(), time.perf_counter()
        ro = envs.collect(policy_fn)
        dt, wall = clock() - t0, time.perf_counter() - w0
        steps = int(ro.mask.sum())
        sampler.append(steps / dt)
        ep_len.append(float(ro.lengths.mean()))
        print(f"round {r + 1}/{args.rounds}: raw {raw[-1]:.0f} steps/s, "
              f"raw over the {n} instances {batched_raw[-1] if batched_raw else float('nan'):.0f} steps/s, "
              f"sampler {sampler[-1]:.0f} steps/s "
              f"({steps} steps in {dt:.2f} s {clock.__name__}, {wall:.2f} s wall; mean episode length "
              f"{ep_len[-1]:.1f})", file=sys.stderr)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        envs.collect(policy_fn)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        print(out.getvalue(), file=sys.stderr)
    envs.close()
    raw_m, samp_m = statistics.median(raw), statistics.median(sampler)
    print(json.dumps({
        "env": env_id, "tasks": args.tasks, "traj": args.traj, "horizon": args.horizon, "num_envs": n,
        "workers": envs.num_workers, "rounds": args.rounds, "clock": clock.__name__,
        "share_model": bool(env_kwargs), "build_s": round(build_s, 2),
        "mean_episode_length": round(statistics.mean(ep_len), 1),
        "raw_env_steps_per_s": round(raw_m, 1), "sampler_steps_per_s": round(samp_m, 1),
        "efficiency": round(samp_m / (raw_m * envs.num_workers), 3),
        # diagnostic: the same N instances stepped in a bare loop; sampler / this = the policy + bookkeeping share
        "raw_batched_env_steps_per_s": round(statistics.median(batched_raw), 1) if batched_raw else None,
        "efficiency_vs_batched_raw": round(samp_m / statistics.median(batched_raw), 3) if batched_raw else None,
        "torch": torch.__version__, "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
