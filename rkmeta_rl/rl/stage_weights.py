"""Per-parameter RK weights in MAML-TRPO: a symmetric trust region and a line-search objective for them.

With per-parameter methods (:mod:`rkmeta_rl.rk.method_spec`) parameter group ``l`` has stage weights
``(a1_l, a2_l)`` and the meta-gradient is, with diagonal ``D_i = diag(a_i^l)``::

    g = D1 grad S0(theta) + D2 J^T grad S1(theta'(theta))        S0 = mean_T surr(pi_theta; D0),
                                                                 S1 = mean_T surr(pi_theta'; D1), J = d theta'/d theta

This is not the gradient of one scalar when the groups' weights differ, and the matching Fisher
``D1 F0 + D2 J^T F1 J`` is not symmetric, so conjugate gradient cannot use it. Instead write
``D_i = w_i W_i`` with a scalar ``w_i`` (the largest-magnitude ``a_i^l``) and a diagonal ``W_i = D_i / w_i``,
and let stage ``i`` see the candidate through its own scaled displacement from ``theta_old``::

    theta_i(theta) = theta_old + W_i (theta - theta_old)
    J_D(theta)     = w1 S0(theta_1(theta)) + w2 S1(theta'(theta_2(theta)))
    KL_D(theta)    = w1 KL0(theta_1(theta)) + w2 KL1(theta'(theta_2(theta)))

(a stage whose weights are all zero is dropped). Then, at ``theta_old``::

    grad J_D   = w1 W1 grad S0 + w2 W2 J^T grad S1 = g                         the per-group meta-gradient
    hess KL_D  = w1 W1 F0 W1 + w2 W2 J^T F1 J W2 = D1 F0 D1 / w1 + D2 J^T F1 J D2 / w2

symmetric, and positive semi-definite for non-negative weights: TRPO's conjugate gradient, step scaling and
line search all apply to ``(J_D, KL_D)`` unchanged. With one method for every parameter ``W_i = 1`` and
``w_i = a_i``: exactly the uniform objective and KL (``theta_i = theta``, no arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from ..rk.method_spec import ParamGroups

__all__ = ["PerParam", "StageWeights", "stage_weights", "scaled_point", "scale"]

#: one float for every parameter, or ``{name: float}``
PerParam = float | Mapping[str, float]


def _collapse(values: Mapping[str, float]) -> PerParam:
    vals = set(values.values())
    return float(next(iter(vals))) if len(vals) == 1 else dict(values)


@dataclass(frozen=True)
class StageWeights:
    """Scalar stage weights ``w = (w1, w2)``, per-parameter scales ``W = (W1, W2)`` (floats 1.0 when uniform)
    and the inner step sizes ``alpha`` (module docstring)."""

    w: tuple[float, float]
    scales: tuple[PerParam, PerParam]
    alpha: PerParam


def stage_weights(groups: ParamGroups, inner_lr: float, step_rule: str = "tableau") -> StageWeights:
    """``D_i = w_i W_i`` for one- and two-stage per-parameter tableaus (module docstring)."""
    weights = groups.weights()
    if len(weights) > 2:
        raise ValueError(f"MAML-TRPO supports one- and two-stage tableaus; got {groups.stages} stages")
    ws: list[float] = []
    scales: list[PerParam] = []
    for i in range(2):
        d = weights[i] if i < len(weights) else {n: 0.0 for n in groups.names}
        w = max(d.values(), key=lambda x: (abs(x), x))
        ws.append(float(w))
        scales.append(1.0 if w == 0.0 else _collapse({n: (1.0 if a == w else a / w) for n, a in d.items()}))
    return StageWeights((ws[0], ws[1]), (scales[0], scales[1]), _collapse(groups.step_sizes(inner_lr, step_rule)))


def scale(values: Mapping[str, torch.Tensor], factors: PerParam) -> dict[str, torch.Tensor]:
    """``W v`` per parameter (``v`` itself, no arithmetic, when ``factors`` is 1.0)."""
    if isinstance(factors, float):
        return dict(values) if factors == 1.0 else {k: factors * v for k, v in values.items()}
    return {k: (v if factors[k] == 1.0 else factors[k] * v) for k, v in values.items()}


def scaled_point(theta: Mapping[str, torch.Tensor], theta_old: Mapping[str, torch.Tensor], factors: PerParam
                 ) -> dict[str, torch.Tensor]:
    """``theta_old + W (theta - theta_old)``; ``theta`` itself (same tensors) where ``W_l == 1``."""
    if isinstance(factors, float) and factors == 1.0:
        return dict(theta)
    out: dict[str, torch.Tensor] = {}
    for k, v in theta.items():
        f = factors if isinstance(factors, float) else factors[k]
        out[k] = v if f == 1.0 else theta_old[k] + f * (v - theta_old[k])
    return out
