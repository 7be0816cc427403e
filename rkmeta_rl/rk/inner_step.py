"""The inner (fast-adaptation) gradient step, the one primitive every caller uses.

For parameter groups ``l`` with step sizes ``alpha_l``::

    theta'_l = theta_l - alpha_l * g_l

``alpha`` is one float for every parameter (MAML's scalar inner learning rate) or a per-parameter mapping
``{name: alpha_l}`` (per-layer Runge-Kutta methods, ANIL-style adaptation of only some layers). A parameter
whose ``alpha_l`` is exactly 0 is returned unchanged (the same tensor object, no arithmetic): it is not adapted.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

__all__ = ["StepSizes", "inner_step", "uniform_step"]

#: One step size for every parameter, or one per parameter name.
StepSizes = float | Mapping[str, float]


def uniform_step(step_sizes: StepSizes) -> float | None:
    """The common step size: ``step_sizes`` itself when it is a float, the shared value of a mapping whose
    values are all the same non-zero float (``inner_step`` then gives bit-identical results with either form),
    else ``None``."""
    if isinstance(step_sizes, (int, float)):
        return float(step_sizes)
    vals = set(float(v) for v in step_sizes.values())
    if len(vals) == 1:
        (v,) = vals
        return v if v != 0.0 else None
    return None


def inner_step(params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
               step_sizes: StepSizes) -> dict[str, torch.Tensor]:
    """One gradient step per parameter group: ``theta'_l = theta_l - alpha_l * g_l``.

    Args:
        params: ``{name: tensor}`` ``theta`` (any shapes; per-task leading dimensions are fine).
        grads: ``g`` with the same names (a mapping), or a sequence aligned with ``params``' order, each of the
            shape of its parameter.
        step_sizes: ``alpha``: a float for every parameter, or ``{name: alpha_l}`` with an entry for every name.

    Returns:
        ``{name: theta'_l}`` (differentiable w.r.t. ``params`` and ``grads``); a parameter with ``alpha_l == 0``
        in a mapping is returned as is.

    Raises:
        ValueError: ``grads`` or ``step_sizes`` does not cover every parameter.
    """
    names = list(params)
    if isinstance(grads, Mapping):
        missing = [k for k in names if k not in grads]
        if missing:
            raise ValueError(f"inner_step: no gradient for parameter(s) {missing}")
        gs = [grads[k] for k in names]
    else:
        gs = list(grads)
        if len(gs) != len(names):
            raise ValueError(f"inner_step: {len(gs)} gradients for {len(names)} parameters")
    if isinstance(step_sizes, (int, float)):
        a = float(step_sizes)
        return {k: params[k] - a * g for k, g in zip(names, gs)}
    missing = [k for k in names if k not in step_sizes]
    if missing:
        raise ValueError(f"inner_step: no step size for parameter(s) {missing}")
    out: dict[str, torch.Tensor] = {}
    for k, g in zip(names, gs):
        a = float(step_sizes[k])
        out[k] = params[k] if a == 0.0 else params[k] - a * g
    return out
