"""Few-shot image classification (Omniglot, MiniImagenet) as a :class:`~rkmeta_rl.supervised.trainer.MetaProblem`.

N-way K-shot episodes (Vinyals et al., 2016) from :class:`~rkmeta_rl.supervised.episodes.EpisodeSampler`,
the functional conv4 of :mod:`rkmeta_rl.supervised.conv4`, cross-entropy losses, query accuracy as the metric
(Finn et al., 2017, section 5.2).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad

from rkmeta_rl.rk import Params, StepSizes, TaskBatchedLoss, inner_step

from .class_split import ClassSplit
from .conv4 import Pool, accuracy, conv4_forward, conv4_losses, init_conv4
from .conv4_tasks import conv4_forward_tasks, task_cross_entropy
from .episodes import EpisodeSampler

__all__ = ["FewShotProblem"]


class FewShotProblem:
    """An N-way K-shot benchmark over class splits.

    Args:
        name: ``"omniglot"`` or ``"miniimagenet"`` (recorded in checkpoints and metrics).
        train, test: class splits for meta-training and meta-test.
        val: optional validation split, used by the periodic evaluation (``test`` classes otherwise, with an
            evaluation seed stream distinct from the final evaluation's).
        ways, shots, queries: N, K and Q (query images per class) of the training episodes.
        test_queries: query images per class of the evaluation episodes (validation and test splits); None: the
            same as ``queries``. (The original MAML code trains Omniglot with K queries and MiniImagenet with 15,
            and evaluates both with K.)
        filters: conv4 channels (Omniglot 64, MiniImagenet 32).
        pool: ``"stride"`` (Omniglot) or ``"max"`` (MiniImagenet).
    """

    primary_metric = "acc"

    def __init__(self, name: str, train: ClassSplit, test: ClassSplit, val: Optional[ClassSplit] = None, *,
                 ways: int = 5, shots: int = 1, queries: int = 15, test_queries: int | None = None, filters: int = 64,
                 pool: Pool = "stride") -> None:
        if test_queries is not None and (isinstance(test_queries, bool) or not isinstance(test_queries, int)
                                         or test_queries < 1):
            raise ValueError(f"test_queries must be an integer >= 1 or None, got {test_queries!r}")
        self.name = name
        self.splits = {"train": train, "val": val if val is not None else test, "test": test}
        self.ways, self.shots, self.queries = ways, shots, queries
        self.test_queries = queries if test_queries is None else test_queries
        self.filters, self.pool = filters, pool
        self.support_loss, self.query_loss = conv4_losses(pool)
        #: query accuracy and loss after adaptation, per task, with the many-tasks form beside it
        self.metric_fn = TaskBatchedLoss(self._query_metric, self._query_metric_tasks)
        # one sampler per split (validated once); each call reseeds it from the trainer's torch generator,
        # so the episode stream is reproducible and resumable through that generator's state alone
        self._samplers = {k: EpisodeSampler(s, ways, shots, queries if k == "train" else self.test_queries, seed=0)
                          for k, s in self.splits.items()}
        c, h, _ = train.image_shape
        self.in_channels, self.image_size = c, h

    def init_params(self, generator: torch.Generator, device: torch.device) -> Params:
        return init_conv4(self.in_channels, self.ways, filters=self.filters, pool=self.pool,
                          image_size=self.image_size, generator=generator, device=device)

    def sample_tasks(self, num_tasks: int, generator: torch.Generator, stages: int, device: torch.device,
                     split: str = "train") -> Any:
        if stages > 2:
            raise ValueError("few-shot benchmarks support one- and two-stage methods (euler, midpoint, heun, "
                             f"ralston, itb, generic(x)); got a {stages}-stage tableau")
        sampler = self._samplers[split]
        sampler.rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        sampler.device = device
        return sampler.sample(num_tasks)

    def _query_metric(self, params: Mapping[str, torch.Tensor], data: Any) -> dict[str, torch.Tensor]:
        """One task's query accuracy and loss (``metric_fn``'s per-task form)."""
        logits = conv4_forward(params, data["xq"], pool=self.pool)
        return {"acc": accuracy(logits, data["yq"]), "loss": F.cross_entropy(logits, data["yq"])}

    def _query_metric_tasks(self, params: Mapping[str, torch.Tensor], tasks: Any) -> dict[str, torch.Tensor]:
        """Every task's query accuracy and loss ``[T]`` with per-task parameters ``[T, *shape]``
        (``metric_fn``'s many-tasks form, which test-time adaptation on the analytic path scores with)."""
        analytic = self.query_loss.analytic  # the strided net's hand-written form: the fastest forward
        if analytic is not None:
            logits = analytic.logits(params, tasks["xq"])
        else:
            logits = conv4_forward_tasks(params, tasks["xq"], pool=self.pool)
        acc = (logits.argmax(dim=-1) == tasks["yq"]).to(logits.dtype).mean(1)
        return {"acc": acc, "loss": task_cross_entropy(logits, tasks["yq"])}

    def figure(self, params: Params, adapt_lr: StepSizes, steps: int, generator: torch.Generator,
               device: torch.device, max_query: int = 20) -> Any:
        """One episode: support images with their labels, query images with the adapted model's predictions
        (green when right, red when wrong)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        data = {k: v[0] for k, v in self.sample_tasks(1, generator, 2, device, split="test").items()}
        cur = {k: v.detach() for k, v in params.items()}
        for _ in range(steps):
            g = grad(self.support_loss)(cur, data)
            cur = inner_step(cur, g, adapt_lr)
        with torch.no_grad():
            pred = conv4_forward(cur, data["xq"], pool=self.pool).argmax(-1)
        ns, nq = data["xs"].shape[0], min(max_query, data["xq"].shape[0])
        cols = max(ns, 10)
        rows_s, rows_q = -(-ns // cols), -(-nq // cols)
        fig, axes = plt.subplots(rows_s + rows_q, cols, figsize=(cols * 0.9, (rows_s + rows_q) * 1.05))
        axes = np.atleast_2d(axes)
        for ax in axes.flat:
            ax.axis("off")

        def show(ax: Any, img: torch.Tensor, title: str, color: str) -> None:
            im = img.detach().cpu()
            if im.shape[0] == 1:
                ax.imshow(im[0], cmap="gray_r", vmin=0, vmax=1)
            else:
                ax.imshow(im.permute(1, 2, 0).clamp(0, 1))
            ax.set_title(title, fontsize=7, color=color)

        for i in range(ns):
            show(axes[i // cols, i % cols], data["xs"][i], f"S {int(data['ys'][i])}", "black")
        for i in range(nq):
            ok = int(pred[i]) == int(data["yq"][i])
            show(axes[rows_s + i // cols, i % cols], data["xq"][i], f"{int(pred[i])} ({int(data['yq'][i])})",
                 "green" if ok else "red")
        fig.suptitle(f"{self.name} {self.ways}-way {self.shots}-shot: support (S label) and query "
                     f"predictions after {steps} steps (true)", fontsize=8)
        fig.tight_layout()
        return fig
