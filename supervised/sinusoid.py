"""Sinusoid regression (Finn et al., 2017, section 5.1; docs/protocols.md).

A task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]`` and phase ``phi ~ U[0, pi]``; inputs
``x ~ U[-5, 5]``; K = 10 support and K = 10 query points; the model is a 1-40-40-1 ReLU MLP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from rkmeta_rl.rk import PerStage

from .mlp import init_mlp, mlp_forward

__all__ = ["SinusoidTasks", "sinusoid_support_loss", "sinusoid_query_loss", "sinusoid_mse_metric",
           "init_sinusoid_model", "sinusoid_predict"]


@dataclass(frozen=True)
class SinusoidTasks:
    """The sinusoid task distribution.

    Attributes:
        amp_range: amplitude interval.
        phase_range: phase interval.
        x_range: input interval.
        k_support: support points per task (K).
        k_query: query points per task.
    """

    amp_range: tuple[float, float] = (0.1, 5.0)
    phase_range: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    k_support: int = 10
    k_query: int = 10

    def sample(self, num_tasks: int, generator: torch.Generator, stages: int = 2,
               device: str | torch.device = "cpu") -> Any:
        """Draw ``num_tasks`` tasks.

        Returns:
            a dict ``{"xs": [T, K, 1], "ys": [T, K, 1], "xq": [T, Kq, 1], "yq": [T, Kq, 1], "amp": [T],
            "phase": [T]}``; for ``stages > 2`` a :class:`~rkmeta_rl.rk.PerStage` of ``stages`` such dicts
            for the same tasks with fresh, disjoint points (docs/method.md).
        """
        if num_tasks <= 0:
            raise ValueError(f"num_tasks must be > 0, got {num_tasks}")
        g = generator
        amp = self.amp_range[0] + (self.amp_range[1] - self.amp_range[0]) * torch.rand(num_tasks, generator=g)
        phase = self.phase_range[0] + (self.phase_range[1] - self.phase_range[0]) * torch.rand(num_tasks, generator=g)
        n_sets = 1 if stages <= 2 else stages
        k = self.k_support + self.k_query
        lo, hi = self.x_range
        x = lo + (hi - lo) * torch.rand(n_sets, num_tasks, k, 1, generator=g)
        y = amp[None, :, None, None] * torch.sin(x - phase[None, :, None, None])
        amp, phase, x, y = (t.to(device) for t in (amp, phase, x, y))
        sets = [{"xs": x[i, :, : self.k_support], "ys": y[i, :, : self.k_support],
                 "xq": x[i, :, self.k_support:], "yq": y[i, :, self.k_support:], "amp": amp, "phase": phase}
                for i in range(n_sets)]
        return sets[0] if stages <= 2 else PerStage(sets)


def init_sinusoid_model(generator: torch.Generator | None = None, hidden: tuple[int, ...] = (40, 40),
                        device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Parameters of the 1-40-40-1 ReLU MLP."""
    return init_mlp((1, *hidden, 1), generator=generator, device=device)


def sinusoid_predict(params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``x [..., 1] -> y_hat [..., 1]``."""
    return mlp_forward(params, x)


def sinusoid_support_loss(params: Mapping[str, torch.Tensor], data: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared error on one task's support set (``xs [K, 1]``, ``ys [K, 1]``)."""
    return torch.nn.functional.mse_loss(mlp_forward(params, data["xs"]), data["ys"])


def sinusoid_query_loss(params: Mapping[str, torch.Tensor], data: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared error on one task's query set (``xq [Kq, 1]``, ``yq [Kq, 1]``)."""
    return torch.nn.functional.mse_loss(mlp_forward(params, data["xq"]), data["yq"])


def sinusoid_mse_metric(params: Mapping[str, torch.Tensor], data: Mapping[str, torch.Tensor]
                        ) -> dict[str, torch.Tensor]:
    """Evaluation metric for :func:`rkmeta_rl.rk.adapt_and_score`: query MSE."""
    return {"mse": sinusoid_query_loss(params, data)}
