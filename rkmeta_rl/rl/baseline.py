"""Linear feature baseline fitted per task by ridge regression (Duan et al. 2016, rllab; used by MAML-RL).

Features of a step at time ``t`` with observation ``o`` (the MAML-RL reference ``LinearFeatureBaseline``)::

    phi = [clip(o, -10, 10), clip(o, -10, 10)^2, t/100, (t/100)^2, (t/100)^3, 1]        (2 * obs_dim + 4)

Only live steps (mask 1) enter the fit. Per task the weights solve ``(X^T X + c I) w = X^T y`` with ``y`` the
discounted returns; a task whose system is not numerically positive definite (Cholesky fails) or gives a
non-finite solution is retried with ``10 c`` up to ``max_tries`` times, then gets all-zero weights (a zero
baseline), so the result is never NaN. All tasks are solved at once with batched ``torch.linalg`` calls on
``[T, F, F]`` systems, in float64.
"""

from __future__ import annotations

import torch

__all__ = ["LinearFeatureBaseline", "baseline_features", "fit_linear_baseline"]


def baseline_features(obs: torch.Tensor, masks: torch.Tensor, time_scale: float = 100.0) -> torch.Tensor:
    """Features of every step.

    Args:
        obs: ``[T, H, B, obs_dim]`` observations (time on dim 1).
        masks: ``[T, H, B]``, 1 on live steps.
        time_scale: ``t`` is divided by this (the reference uses 100).

    Returns:
        ``[T, H, B, 2 * obs_dim + 4]``; rows of dead steps are zero.
    """
    horizon = obs.shape[1]
    m = masks.unsqueeze(-1).to(obs.dtype)
    o = obs.clamp(-10.0, 10.0)
    t = (torch.arange(horizon, dtype=obs.dtype, device=obs.device) / time_scale).view(1, horizon, 1, 1)
    t = t.expand(*obs.shape[:-1], 1)
    return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1) * m


def fit_linear_baseline(features: torch.Tensor, returns: torch.Tensor, masks: torch.Tensor,
                        reg_coeff: float = 1e-5, max_tries: int = 5) -> torch.Tensor:
    """Per-task ridge regression of returns on features.

    Args:
        features: ``[T, ..., F]`` (rows of dead steps may be anything: they are masked out).
        returns: ``[T, ...]`` regression targets.
        masks: ``[T, ...]``, 1 on rows that enter the fit.
        reg_coeff: initial ridge coefficient ``c``; multiplied by 10 on each retry. With ``c <= 0`` the first
            try is unregularised and the retries use ``1e-8, 1e-7, ...``.
        max_tries: number of tries before falling back to zero weights.

    Returns:
        ``[T, F]`` weights (float64, finite).
    """
    n_tasks, n_feat = features.shape[0], features.shape[-1]
    x = features.reshape(n_tasks, -1, n_feat).double()
    m = masks.reshape(n_tasks, -1, 1).double()
    y = returns.reshape(n_tasks, -1, 1).double()
    x = torch.where(m > 0, x, torch.zeros_like(x))
    y = torch.where(m > 0, y, torch.zeros_like(y))
    xtx = x.transpose(1, 2) @ x                      # [T, F, F]
    xty = x.transpose(1, 2) @ y                      # [T, F, 1]
    eye = torch.eye(n_feat, dtype=xtx.dtype, device=xtx.device)
    coeffs = torch.zeros(n_tasks, n_feat, dtype=xtx.dtype, device=xtx.device)
    todo = torch.ones(n_tasks, dtype=torch.bool, device=xtx.device)
    regs = [reg_coeff * 10.0 ** k for k in range(max_tries)] if reg_coeff > 0 else \
        [0.0] + [1e-8 * 10.0 ** k for k in range(max_tries - 1)]
    for reg in regs:
        idx = todo.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        a = xtx[idx] + reg * eye
        chol, info = torch.linalg.cholesky_ex(a)
        sol = torch.cholesky_solve(xty[idx], chol).squeeze(-1)
        ok = (info == 0) & torch.isfinite(sol).all(-1) & torch.isfinite(a).flatten(1).all(-1)
        coeffs[idx[ok]] = sol[ok]
        todo[idx[ok]] = False
    return coeffs


class LinearFeatureBaseline:
    """Value baseline ``V(s_t) = phi(s_t, t) . w_task`` refitted on every batch of episodes.

    Args:
        reg_coeff: ridge coefficient (reference: 1e-5).
        max_tries: retries with 10x more regularisation before falling back to a zero baseline.
    """

    def __init__(self, reg_coeff: float = 1e-5, max_tries: int = 5) -> None:
        self.reg_coeff = float(reg_coeff)
        self.max_tries = int(max_tries)

    def fit_predict(self, obs: torch.Tensor, returns: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Fit on ``(obs [T, H, B, obs_dim], returns [T, H, B], masks [T, H, B])`` and return the values
        ``[T, H, B]`` (dtype of ``returns``; zero on dead steps)."""
        feats = baseline_features(obs.double(), masks)
        w = fit_linear_baseline(feats, returns, masks, self.reg_coeff, self.max_tries)   # [T, F]
        values = torch.einsum("thbf,tf->thb", feats, w)
        return values.to(returns.dtype) * masks.to(returns.dtype)
