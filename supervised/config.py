"""Typed settings of supervised meta-training: :class:`MetaTrainConfig` (any problem; defaults: sinusoid) and
:class:`FewShotConfig` (plus the few-shot data settings). Named presets: :mod:`rkmeta_rl.presets`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from rkmeta_rl.common.config import BaseConfig
from rkmeta_rl.rk.meta_gradient import PATHS
from rkmeta_rl.utils import check_positive

__all__ = ["MetaTrainConfig", "FewShotConfig"]


@dataclass
class MetaTrainConfig(BaseConfig):
    """Settings of a supervised meta-training run (defaults: the sinusoid benchmark).

    Attributes (beyond :class:`~rkmeta_rl.common.config.BaseConfig`'s):
        meta_batch_size: tasks per meta-iteration.
        test_inner_steps: inner steps scored at evaluation (metrics after 1..this many steps are kept).
        meta_lr: Adam learning rate.
        path: engine execution path: ``"auto"``, ``"vmap"``, ``"loop"``, ``"batched"`` or ``"analytic"``
            (:func:`rkmeta_rl.rk.meta_gradient`).
        compile: ``torch.compile`` the vectorised meta-gradient: ``True`` from the first iteration, ``False``
            never, ``None`` (default) when it pays (``compile="auto"`` of :func:`rkmeta_rl.rk.meta_gradient`).
            A failed compile falls back to the eager program with a warning.
        eval_interval: iterations between evaluations during training (0: never).
        eval_tasks: tasks per evaluation during training.
        final_eval_tasks: tasks of the final evaluation.
        eval_chunk: tasks adapted at once at evaluation (memory bound; None: all).
        train_chunk: tasks per meta-gradient program in training on the vmap, batched and analytic paths (a
            memory bound; None: all tasks at once, except on the analytic path, which then chunks large tasks by
            itself, ``rkmeta_rl.rk.analytic.default_chunk``). The result is the same to rounding.
        diagnostics_interval: the forward-only diagnostics ``train/query_loss_pre`` and
            ``train/support_loss_post`` (two more forward passes per task: 12-14 % of a few-shot conv4 iteration on
            the analytic path at 1 query image per class, 22-37 % at 15; ``scripts/bench_fewshot.py --diagnostics
            both``), and for one-stage methods such as euler ``train/query_loss_post`` (their adaptation and
            query pass are diagnostics too), are computed on every this-many-th iteration and logged as the mean
            of those; the losses the meta-gradient computes anyway (``support_loss_pre``, and
            ``query_loss_post`` for methods with a second stage) every iteration. 1 (default): every iteration.
            The meta-gradient does not depend on it. On a compiled program (an MLP, ``compile``) each setting is
            its own compiled program: keep 1 there.
    """

    method: str = "midpoint"
    iterations: int = 70_000
    inner_lr: float = 0.01
    log_interval: int = 100
    checkpoint_interval: int = 2000
    threads: Optional[int] = None
    meta_batch_size: int = 25
    test_inner_steps: int = 10
    meta_lr: float = 1e-3
    path: str = "auto"
    compile: Optional[bool] = None
    eval_interval: int = 5000
    eval_tasks: int = 100
    final_eval_tasks: int = 600
    eval_chunk: Optional[int] = None
    train_chunk: Optional[int] = None
    diagnostics_interval: int = 1

    def validate(self) -> None:
        """Fail before any work with a message naming the bad setting."""
        super().validate()
        check_positive("meta_batch_size", self.meta_batch_size, integer=True)
        check_positive("test_inner_steps", self.test_inner_steps, integer=True)
        check_positive("meta_lr", self.meta_lr)
        check_positive("eval_interval", self.eval_interval, integer=True, allow_zero=True)
        check_positive("eval_tasks", self.eval_tasks, integer=True)
        check_positive("final_eval_tasks", self.final_eval_tasks, integer=True)
        check_positive("diagnostics_interval", self.diagnostics_interval, integer=True)
        for name in ("eval_chunk", "train_chunk"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name), integer=True)
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(map(repr, PATHS))}, got {self.path!r}")


@dataclass
class FewShotConfig(MetaTrainConfig):
    """Few-shot image classification (Omniglot, MiniImagenet): the training settings and the data settings.

    The training fields default to :class:`MetaTrainConfig`'s; a benchmark's settings are its preset
    (:func:`rkmeta_rl.presets.fewshot_preset`), which is what the command line starts from.

    Attributes (beyond :class:`MetaTrainConfig`'s):
        dataset: ``"omniglot"`` or ``"miniimagenet"``.
        ways, shots: classes per episode and support images per class.
        queries: query images per class in training.
        test_queries: query images per class at evaluation (None: ``queries``).
        split_seed: Omniglot's character split seed (None: the fixed canonical split, independent of ``seed``).
        filters: conv4 filters per layer.
        pool: ``"stride"`` (strided convolutions) or ``"max"`` (max-pooling).
        val_characters: Omniglot characters carved out of the training ones for validation.
    """

    MAX_STAGES: ClassVar[Optional[int]] = 2

    dataset: str = "omniglot"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    test_queries: Optional[int] = None
    split_seed: Optional[int] = None
    filters: int = 64
    pool: str = "stride"
    val_characters: int = 0

    def validate(self) -> None:
        super().validate()
        if self.dataset not in ("omniglot", "miniimagenet"):
            raise ValueError(f"dataset must be 'omniglot' or 'miniimagenet', got {self.dataset!r}")
        for name in ("ways", "shots", "queries", "filters"):
            check_positive(name, getattr(self, name), integer=True)
        if self.test_queries is not None:
            check_positive("test_queries", self.test_queries, integer=True)
        check_positive("val_characters", self.val_characters, integer=True, allow_zero=True)
        if self.split_seed is not None and (not isinstance(self.split_seed, int) or isinstance(self.split_seed, bool)):
            raise ValueError(f"split_seed must be an integer or None, got {self.split_seed!r}")
        if self.pool not in ("stride", "max"):
            raise ValueError(f"pool must be 'stride' or 'max', got {self.pool!r}")
