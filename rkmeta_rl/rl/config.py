"""``MetaTRPOConfig``: every setting of RK-weighted MAML-TRPO in one typed, validated dataclass.

Defaults are the seed paper's 2D-navigation setting (Im et al., 2019; Finn et al., 2017): 2x100 ReLU policy,
inner learning rate 0.16, 40 tasks x 20 trajectories; named presets are in :mod:`rkmeta_rl.presets`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from ..common.config import BaseConfig
from ..utils import check_positive, check_unit_interval
from .policy import ACTIVATIONS

__all__ = ["MetaTRPOConfig", "SAMPLERS", "REFERENCE_NAV_KWARGS"]

#: Accepted ``sampler`` settings (see :func:`rkmeta_rl.rl.sampler.make_sampler`).
SAMPLERS = ("auto", "twin", "batched", "gym")


@dataclass
class MetaTRPOConfig(BaseConfig):
    """Settings of :class:`~rkmeta_rl.rl.algorithm.MetaTRPO` (beyond :class:`~rkmeta_rl.common.config.BaseConfig`'s).

    Attributes:
        env: the registered task-family id (``None`` for an unregistered env instance).
        meta_batch_size: tasks per meta-iteration.
        fast_batch_size: trajectories per task for each of D0 and D1.
        max_kl, cg_iters, cg_damping, ls_backtrack_ratio, ls_max_steps: TRPO settings (Schulman et al., 2015).
        gamma, gae_lambda: discount and GAE lambda, each in (0, 1].
        horizon: episode horizon (None: the env's ``max_episode_steps``).
        fvp_subsample: fraction of steps for the Fisher-vector product (1.0: exact).
        normalize_advantages: standardise advantages per task.
        sampler: ``"auto"``, ``"twin"``, ``"batched"`` or ``"gym"``.
        num_workers: worker processes of the batched sampler (results do not depend on it).
        policy_kwargs: ``hidden_sizes``, ``activation``, ``init_log_std`` (and ``dtype``) of the Gaussian MLP.
    """

    MAX_STAGES: ClassVar[Optional[int]] = 2

    method: str = "ralston"
    iterations: int = 100
    inner_lr: float = 0.16
    checkpoint_interval: int = 5
    env: Optional[str] = "rkmeta/Navigation2D-v0"
    meta_batch_size: int = 40
    fast_batch_size: int = 20
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_backtrack_ratio: float = 0.8
    ls_max_steps: int = 15
    gamma: float = 0.99
    gae_lambda: float = 1.0
    horizon: Optional[int] = None
    fvp_subsample: float = 1.0
    normalize_advantages: bool = True
    sampler: str = "auto"
    num_workers: int = 1
    policy_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.policy_kwargs = dict(self.policy_kwargs or {})
        if isinstance(self.policy_kwargs.get("hidden_sizes"), list):
            self.policy_kwargs["hidden_sizes"] = tuple(self.policy_kwargs["hidden_sizes"])

    def validate(self) -> None:
        """Fail before any work with one line naming the bad setting."""
        super().validate()
        for name in ("meta_batch_size", "fast_batch_size", "cg_iters", "ls_max_steps", "num_workers"):
            check_positive(name, getattr(self, name), integer=True)
        check_positive("max_kl", self.max_kl)
        check_positive("cg_damping", self.cg_damping, allow_zero=True)
        check_unit_interval("gamma", self.gamma)
        check_unit_interval("gae_lambda", self.gae_lambda)
        check_unit_interval("fvp_subsample", self.fvp_subsample)
        if not 0 < self.ls_backtrack_ratio < 1:
            raise ValueError(f"ls_backtrack_ratio must be in (0, 1), got {self.ls_backtrack_ratio!r}")
        if self.horizon is not None:
            check_positive("horizon", self.horizon, integer=True)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        hidden = self.policy_kwargs.get("hidden_sizes", (1,))
        if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden_sizes must be positive integers, got {hidden!r}")
        if self.policy_kwargs.get("activation", "relu") not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got "
                             f"{self.policy_kwargs['activation']!r}")


#: The widely used PyTorch MAML-RL code's 2D-navigation setting as ``MetaTRPO`` keyword arguments (the
#: ``reference`` preset of :mod:`rkmeta_rl.presets` is built from it).
REFERENCE_NAV_KWARGS: dict[str, Any] = {"meta_batch_size": 20, "fast_batch_size": 20, "inner_lr": 0.1,
                                        "policy_kwargs": {"hidden_sizes": (64, 64), "activation": "tanh"}}
