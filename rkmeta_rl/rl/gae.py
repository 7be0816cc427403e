"""Discounted returns and generalised advantage estimation with early-termination masks.

GAE (Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage Estimation", 2016), as
used by MAML-RL (Finn et al., 2017) with ``gamma = 0.99`` and ``lambda = 1`` (then ``A_t = R_t - V(s_t)``).

Layout: time on dim 1, ``[T, H, B]`` (tasks, time, trajectories). ``masks[:, t]`` is 1 while the episode is
alive at step ``t`` (the step that ends an episode is alive; every later one is dead). A dead step contributes
nothing and the value after the last live step is 0 (termination, and the horizon as in the reference code).
"""

from __future__ import annotations

import torch

__all__ = ["discounted_returns", "gae"]


def discounted_returns(rewards: torch.Tensor, masks: torch.Tensor, gamma: float = 0.99) -> torch.Tensor:
    """``R_t = r_t + gamma * R_{t+1}`` over live steps: ``[T, H, B]`` -> ``[T, H, B]`` (0 on dead steps)."""
    r = rewards * masks
    out = torch.zeros_like(r)
    acc = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        acc = r[:, t] + gamma * acc * (masks[:, t + 1] if t + 1 < r.shape[1] else 0.0)
        out[:, t] = acc
    return out * masks


def gae(rewards: torch.Tensor, values: torch.Tensor, masks: torch.Tensor, gamma: float = 0.99,
        gae_lambda: float = 1.0) -> torch.Tensor:
    """Generalised advantages.

    ``delta_t = r_t + gamma m_{t+1} V_{t+1} - V_t``, ``A_t = delta_t + gamma lambda m_{t+1} A_{t+1}``, both zero
    on dead steps (``m_{H} = 0``).

    Args:
        rewards, values, masks: ``[T, H, B]``.

    Returns:
        ``[T, H, B]`` advantages (0 on dead steps).
    """
    m = masks.to(rewards.dtype)
    r, v = rewards * m, values * m
    horizon = r.shape[1]
    out = torch.zeros_like(r)
    acc = torch.zeros_like(r[:, 0])
    for t in range(horizon - 1, -1, -1):
        if t + 1 < horizon:
            m_next, v_next = m[:, t + 1], v[:, t + 1]
        else:
            m_next, v_next = torch.zeros_like(acc), torch.zeros_like(acc)
        delta = r[:, t] + gamma * m_next * v_next - v[:, t]
        acc = (delta + gamma * gae_lambda * m_next * acc) * m[:, t]
        out[:, t] = acc
    return out
