"""The sinusoid benchmark as a :class:`~rkmeta_rl.supervised.trainer.MetaProblem` (with its TensorBoard figure)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch.func import grad

from rkmeta_rl.rk import Params, StepSizes, inner_step

from .sinusoid import (
    SinusoidTasks,
    init_sinusoid_model,
    sinusoid_mse_metric,
    sinusoid_predict,
    sinusoid_query_loss,
    sinusoid_support_loss,
)

__all__ = ["SinusoidProblem"]


class SinusoidProblem:
    """Sinusoid regression (Finn et al., 2017): K-shot support/query tasks, 1-40-40-1 ReLU MLP, MSE."""

    name = "sinusoid"
    primary_metric = "mse"

    def __init__(self, tasks: SinusoidTasks | None = None, hidden: tuple[int, ...] = (40, 40)) -> None:
        self.tasks = tasks or SinusoidTasks()
        self.hidden = hidden
        self.support_loss = sinusoid_support_loss
        self.query_loss = sinusoid_query_loss

    def init_params(self, generator: torch.Generator, device: torch.device) -> Params:
        return init_sinusoid_model(generator, self.hidden, device)

    def sample_tasks(self, num_tasks: int, generator: torch.Generator, stages: int, device: torch.device,
                     split: str = "train") -> Any:
        return self.tasks.sample(num_tasks, generator, stages, device)

    def metric_fn(self, params: Mapping[str, torch.Tensor], data: Any) -> dict[str, torch.Tensor]:
        return sinusoid_mse_metric(params, data)

    def figure(self, params: Params, adapt_lr: StepSizes, steps: int, generator: torch.Generator,
               device: torch.device, num_tasks: int = 4) -> Any:
        """True curves, support points and predictions before and after 1 and ``steps`` adaptation steps."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        data = self.tasks.sample(num_tasks, generator, 2, device)
        xs_plot = torch.linspace(*self.tasks.x_range, 200, device=device)[:, None]
        fig, axes = plt.subplots(1, num_tasks, figsize=(3.2 * num_tasks, 2.8), sharey=True)
        theta = {k: v.detach() for k, v in params.items()}
        for t, ax in enumerate(axes):
            d = {k: v[t] for k, v in data.items()}
            amp, phase = float(d["amp"]), float(d["phase"])
            ax.plot(xs_plot[:, 0].cpu(), (amp * torch.sin(xs_plot[:, 0] - phase)).cpu(), "k-", lw=2, label="true")
            ax.plot(d["xs"][:, 0].cpu(), d["ys"][:, 0].cpu(), "k^", ms=6, label="support")
            cur = theta
            with torch.no_grad():
                ax.plot(xs_plot[:, 0].cpu(), sinusoid_predict(cur, xs_plot)[:, 0].cpu(), ":", label="pre-update")
            for s in range(1, steps + 1):
                g = grad(sinusoid_support_loss)(cur, d)
                cur = inner_step(cur, g, adapt_lr)
                if s in (1, steps):
                    with torch.no_grad():
                        ax.plot(xs_plot[:, 0].cpu(), sinusoid_predict(cur, xs_plot)[:, 0].cpu(), "--",
                                label=f"{s} step{'s' if s > 1 else ''}")
            ax.set_title(f"A={amp:.2f}, phase={phase:.2f}", fontsize=9)
            ax.set_xlabel("x")
        axes[0].legend(fontsize=7, loc="lower left")
        fig.tight_layout()
        return fig
