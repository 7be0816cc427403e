"""Trust-region step machinery (Schulman et al., "Trust Region Policy Optimization", ICML 2015).

* :func:`conjugate_gradient` solves ``F x = g`` with Fisher-vector products only.
* :func:`trpo_update` turns a gradient and a Fisher-vector product into the natural-gradient step scaled so
  that the quadratic KL estimate ``1/2 s^T F s`` equals ``max_kl``, then runs the backtracking line search that
  accepts the first step fraction ``ratio^k`` whose objective improves with ``KL <= max_kl``, restoring the old
  parameters if none does.

Everything works on flat parameter vectors; :func:`flatten` / :func:`unflatten` convert from / to the
policy's parameter dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

__all__ = ["conjugate_gradient", "conjugate_gradient_product", "trpo_update", "TRPOStats", "flatten",
           "unflatten"]


def flatten(tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors (dict values in order) into one flat vector."""
    vals = tensors.values() if isinstance(tensors, Mapping) else tensors
    return torch.cat([t.reshape(-1) for t in vals])


def unflatten(vector: torch.Tensor, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split a flat vector into a dict shaped like ``like`` (views of ``vector``)."""
    out, i = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = vector[i:i + n].view_as(v)
        i += n
    if i != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, parameters {i}")
    return out


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       residual_tol: float = 1e-10) -> tuple[torch.Tensor, float]:
    """Solve ``A x = b``; see :func:`conjugate_gradient_product` (which also returns ``A x``)."""
    x, res, _ = conjugate_gradient_product(matvec, b, iters, residual_tol)
    return x, res


def conjugate_gradient_product(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                               residual_tol: float = 1e-10) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Solve ``A x = b`` for symmetric positive-definite ``A`` given only ``x -> A x``.

    Starts from ``x = 0`` (as Schulman's ``modular_rl`` and the MAML-RL reference). Not
    ``sb3_contrib.common.utils.conjugate_gradient_solver``: that one starts from ``1e-4 * randn`` (consuming
    the global RNG, so results would depend on unrelated draws) and does not report the residual, which we log.

    Args:
        matvec: ``v [n] -> A v [n]``.
        b: ``[n]`` right-hand side.
        iters: at most this many matrix-vector products.
        residual_tol: stop when ``||r||^2`` falls below it.

    Returns:
        ``(x [n], ||b - A x||, A x [n])`` with the residual norm tracked by the CG recurrence, and
        ``A x = sum_k alpha_k A p_k`` accumulated from the products CG makes anyway (``x = sum_k alpha_k p_k``, and
        ``A`` is linear), so TRPO's step scaling ``x^T A x`` needs no further matrix-vector product.
    """
    x = torch.zeros_like(b)
    ax = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = torch.dot(r, r)
    for _ in range(iters):
        if rr.item() < residual_tol:
            break
        ap = matvec(p)
        alpha = rr / torch.dot(p, ap)
        x = x + alpha * p
        ax = ax + alpha * ap
        r = r - alpha * ap
        rr_new = torch.dot(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, float(rr.sqrt().item()), ax


@dataclass
class TRPOStats:
    """Diagnostics of one TRPO step.

    Attributes:
        loss_before, loss_after: objective (to be minimised) at the old / accepted parameters.
        improvement: ``loss_before - loss_after`` (0 when every step failed).
        kl: KL of the accepted step (0 when every step failed).
        ls_steps: line-search evaluations made (``ls_max_steps`` when none was accepted).
        accepted: whether a step was accepted.
        step_frac: the accepted fraction ``ratio^k`` (0 when none).
        cg_residual: final CG residual norm.
        grad_norm: norm of the objective's gradient.
    """

    loss_before: float
    loss_after: float
    improvement: float
    kl: float
    ls_steps: int
    accepted: bool
    step_frac: float
    cg_residual: float
    grad_norm: float


#: The full step is scaled so that its quadratic KL estimate is exactly ``max_kl``; where the measured KL is that
#: same quadratic (a linear model, a test), float rounding alone can put it an ulp above. The line search accepts
#: ``KL <= max_kl * KL_ROUNDING`` so that rounding never rejects the full step.
KL_ROUNDING = 1.0 + 1e-9


def trpo_update(
    theta: torch.Tensor,
    grad: torch.Tensor,
    fvp: Callable[[torch.Tensor], torch.Tensor],
    evaluate: Callable[[torch.Tensor], tuple[float, float]],
    loss_before: float,
    max_kl: float = 0.01,
    cg_iters: int = 10,
    backtrack_ratio: float = 0.8,
    ls_max_steps: int = 15,
) -> tuple[torch.Tensor, TRPOStats]:
    """One TRPO step on a flat parameter vector.

    Args:
        theta: ``[n]`` current parameters.
        grad: ``[n]`` gradient of the loss (objective to minimise) at ``theta``.
        fvp: ``v -> (F + damping I) v``, the damped Fisher-vector product at ``theta``.
        evaluate: ``theta_new -> (loss, kl)`` (KL from the old policy to the candidate).
        loss_before: the loss at ``theta``.
        max_kl: trust-region radius.
        cg_iters: CG iterations.
        backtrack_ratio: line-search shrink factor.
        ls_max_steps: line-search tries.

    Returns:
        ``(theta_new, stats)``; ``theta_new`` is ``theta`` (a copy) when no step is accepted.
    """
    # s^T F s from CG's own products (F step_dir = sum_k alpha_k F p_k): no extra Fisher-vector product
    step_dir, residual, f_step = conjugate_gradient_product(fvp, grad, cg_iters)
    shs = 0.5 * torch.dot(step_dir, f_step)
    grad_norm = float(grad.norm().item())
    if not bool(torch.isfinite(shs)) or shs.item() <= 0.0 or not bool(torch.isfinite(step_dir).all()):
        return theta.clone(), TRPOStats(loss_before, loss_before, 0.0, 0.0, 0, False, 0.0, residual, grad_norm)
    # 1/2 s^T F s = max_kl for s = step_dir * sqrt(max_kl / shs)
    full_step = step_dir * torch.sqrt(max_kl / shs)
    frac = 1.0
    for k in range(ls_max_steps):
        cand = theta - frac * full_step
        loss, kl = evaluate(cand)
        if loss < loss_before and kl <= max_kl * KL_ROUNDING:
            return cand, TRPOStats(loss_before, loss, loss_before - loss, kl, k + 1, True, frac, residual, grad_norm)
        frac *= backtrack_ratio
    return theta.clone(), TRPOStats(loss_before, loss_before, 0.0, 0.0, ls_max_steps, False, 0.0, residual,
                                    grad_norm)
