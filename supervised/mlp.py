"""A functional multilayer perceptron: parameters in a dict, a pure forward function."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

__all__ = ["init_mlp", "mlp_forward"]


def init_mlp(sizes: Sequence[int], generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Parameters ``{"w0", "b0", "w1", ...}`` of an MLP with layer widths ``sizes`` (input first).

    Weights use PyTorch's ``nn.Linear`` default, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and
    biases, drawn from ``generator`` so initialisation is reproducible. ``w_i`` has shape ``[out, in]``.
    """
    if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
        raise ValueError(f"sizes must list at least two positive widths, got {list(sizes)}")
    params: dict[str, torch.Tensor] = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(fan_out, fan_in, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        b = (torch.rand(fan_out, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        params[f"w{i}"] = w.to(dtype=dtype, device=device)
        params[f"b{i}"] = b.to(dtype=dtype, device=device)
    return params


def mlp_forward(params: Mapping[str, torch.Tensor], x: torch.Tensor, activation: str = "relu") -> torch.Tensor:
    """``x [..., in] -> [..., out]``: affine layers with ``activation`` between them (none after the last)."""
    n = len(params) // 2
    act = torch.relu if activation == "relu" else torch.tanh
    h = x
    for i in range(n):
        h = torch.nn.functional.linear(h, params[f"w{i}"], params[f"b{i}"])
        if i < n - 1:
            h = act(h)
    return h
