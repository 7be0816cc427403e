"""Evaluating a meta-policy the way the paper's Figure 5 does, and pictures of its trajectories.

* :func:`adaptation_curve`: on fixed tasks, the mean return after 0, 1, ..., n inner gradient steps, each
  step sampling fresh episodes with the current adapted policy (Finn et al., 2017, Fig. 5; Im et al., 2019).
* :func:`oracle_returns`: the return of a policy told the task, by stepping the real env with an
  ``oracle_action(obs, task)`` the family provides (2D navigation: straight to the goal at full speed).
* :func:`trajectory_figure`: 2D-navigation paths before and after adaptation, goals marked.

All of them draw on their own generators, so calling them never perturbs training's random streams.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch

from .baseline import LinearFeatureBaseline
from .meta_trpo import MetaTRPOStep
from .policy import Params
from .sampler import Sampler

__all__ = ["adaptation_curve", "oracle_returns", "trajectory_figure"]


def adaptation_curve(sampler: Sampler, meta_step: MetaTRPOStep, params: Mapping[str, torch.Tensor],
                     tasks: Sequence[Any], num_steps: int, num_traj: int, generator: torch.Generator,
                     gamma: float = 0.99, gae_lambda: float = 1.0, normalize_advantages: bool = True,
                     alpha: float | None = None) -> np.ndarray:
    """Per-task mean episode return after ``0..num_steps`` inner steps.

    Args:
        sampler: episode sampler of the task family.
        meta_step: provides the REINFORCE inner step (``adapt``) and the method's ``alpha``.
        params: meta-parameters (shared layout).
        tasks: the ``T`` evaluation tasks.
        num_steps: inner steps; step ``k`` samples ``num_traj`` fresh episodes with the policy after ``k`` steps.
        num_traj: episodes per task per step.
        generator: action-noise generator.
        alpha: inner learning rate (default: the method's).

    Returns:
        ``[T, num_steps + 1]`` mean undiscounted returns.
    """
    baseline = LinearFeatureBaseline()
    cur: Params = {k: v.detach() for k, v in params.items()}
    out = []
    for k in range(num_steps + 1):
        eps = sampler.sample(list(tasks), cur, num_traj, generator)
        out.append(eps.episode_returns().mean(1).cpu().numpy())
        if k < num_steps:
            eps.compute_advantages(baseline, gamma, gae_lambda, normalize_advantages)
            cur = meta_step.adapt(cur, [eps.flat()], alpha=alpha)
    return np.stack(out, axis=1)


def oracle_returns(env_id: str | gym.Env, tasks: Sequence[Any]) -> np.ndarray:
    """Return of the family's oracle policy on each task (``[T]``), stepping the real Gymnasium env.

    The unwrapped env must provide ``oracle_action(obs, task) -> action``.
    """
    env = gym.make(env_id, disable_env_checker=True) if isinstance(env_id, str) else env_id
    if not hasattr(env.unwrapped, "oracle_action"):
        raise TypeError(f"{type(env.unwrapped).__name__} has no oracle_action(obs, task)")
    out = []
    for task in tasks:
        obs, _ = env.reset(options={"task": task})
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(env.unwrapped.oracle_action(obs, task))
            total += float(r)
            done = term or trunc
        out.append(total)
    return np.asarray(out)


def trajectory_figure(sampler: Sampler, meta_step: MetaTRPOStep, params: Mapping[str, torch.Tensor],
                      tasks: Sequence[Any], generator: torch.Generator, num_traj: int = 20, shown: int = 3,
                      title: str = "") -> Any:
    """One panel per task: ``shown`` paths of the pre-adaptation policy and of the policy after one inner step
    (adapted on ``num_traj`` pre-adaptation episodes), the goal as a star. Returns a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cur: Params = {k: v.detach() for k, v in params.items()}
    pre = sampler.sample(list(tasks), cur, num_traj, generator)
    pre.compute_advantages(LinearFeatureBaseline())
    post_params = meta_step.adapt(cur, [pre.flat()])
    post = sampler.sample(list(tasks), post_params, num_traj, generator)
    n = len(tasks)
    fig, axes = plt.subplots(1, n, figsize=(3.0 * n, 3.1), squeeze=False)
    for i, ax in enumerate(axes[0]):
        goal = np.asarray(tasks[i]["goal"])
        for eps, colour, label in ((pre, "tab:blue", "pre-update"), (post, "tab:red", "1 step")):
            for b in range(min(shown, eps.num_traj)):
                m = eps.masks[i, :, b].bool().cpu().numpy()
                xy = eps.obs[i, :, b].cpu().numpy()[m]  # obs[t]: the position before step t (starts at 0)
                ax.plot(xy[:, 0], xy[:, 1], "-", color=colour, lw=1, alpha=0.7, label=label if b == 0 else None)
        ax.plot(*goal, "k*", ms=12, label="goal")
        ax.plot(0, 0, "ko", ms=4)
        ax.set_xlim(-0.6, 0.6)
        ax.set_ylim(-0.6, 0.6)
        ax.set_aspect("equal")
        ret_pre = float(pre.episode_returns()[i].mean())
        ret_post = float(post.episode_returns()[i].mean())
        ax.set_title(f"return {ret_pre:.1f} -> {ret_post:.1f}", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
