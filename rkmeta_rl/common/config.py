"""Typed run configurations: the settings every meta-training algorithm shares, one validation pass, and the
resume comparison.

Every algorithm has one dataclass (:class:`~rkmeta_rl.supervised.config.MetaTrainConfig`,
:class:`~rkmeta_rl.rl.config.MetaTRPOConfig`, ...) deriving from :class:`BaseConfig`; checkpoints store the whole
config (:meth:`BaseConfig.to_dict`). A resumed or loaded run compares every field with the checkpoint's
(:meth:`BaseConfig.check_resume`) and refuses any difference, naming the field and both values, except the fields
of :attr:`BaseConfig.MAY_CHANGE`: the run length, the time budget, logging / evaluation / checkpoint / diagnostics
intervals and evaluation sizes, the device, threads and worker counts, the tasks per training program
(``train_chunk``), and whether the meta-gradient is compiled. These change
how long or where a run trains and what it reports, never what a training step computes (the device and compiling
change it only by floating-point rounding).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional

import torch

from ..errors import ConfigMismatchError
from ..utils import check_positive, resolve_device

__all__ = ["BaseConfig", "validate_method", "MAY_CHANGE_ON_RESUME"]

#: Fields a resumed run may change (documented in the module docstring).
MAY_CHANGE_ON_RESUME: frozenset[str] = frozenset({
    "iterations", "time_budget_min", "log_interval", "eval_interval", "checkpoint_interval", "eval_tasks",
    "final_eval_tasks", "eval_chunk", "train_chunk", "device", "threads", "num_workers", "compile",
    "diagnostics_interval",
})

STEP_RULES = ("tableau", "fixed")


def validate_method(spec: Any, max_stages: int | None = None) -> None:
    """The one check of a ``method`` setting: a tableau name, ``generic(x)``, a number, or per-parameter methods
    ``"glob=method,..."`` (:func:`rkmeta_rl.rk.parse_method_spec`).

    Args:
        spec: the method setting.
        max_stages: the most RK stages the algorithm supports (None: any).

    Raises:
        ValueError: an unknown method, or one with too many stages.
    """
    from ..rk import parse_method_spec

    tab = parse_method_spec(spec)
    if max_stages is not None and tab.stages > max_stages:
        raise ValueError(f"this trainer supports one- and two-stage methods; {tab.name} has {tab.stages} stages")


def _storable(value: Any) -> Any:
    """A value as checkpoints store it: tuples as lists, mappings recursively (dtypes stay dtypes)."""
    if isinstance(value, Mapping):
        return {str(k): _storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_storable(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """A value as stored and compared: tuples as lists, dtypes as strings, mappings recursively."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.dtype):
        return str(value)
    return value


@dataclass
class BaseConfig:
    """Settings every meta-training algorithm shares.

    Attributes:
        method: RK method: a tableau name, ``generic(x)`` or a number ``x > 0``.
        iterations: meta-iterations of the run.
        inner_lr: MAML's inner rate alpha (see ``step_rule``).
        inner_steps: inner gradient steps during meta-training.
        step_rule: ``"tableau"`` (adapt with ``2 q21 inner_lr``: ``midpoint`` is MAML) or ``"fixed"``.
        first_order: drop second-order terms through the inner step.
        adapt: parameter glob(s) the inner loop moves (comma separated); ``None``: all parameters.
        seed: seeds initialisation and every random stream.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        log_interval: iterations between logger dumps.
        checkpoint_interval: iterations between checkpoints.
        time_budget_min: stop training cleanly after this many minutes (None: no budget).
        threads: torch intra-op threads (None: leave torch's setting).
    """

    #: fields a resumed run may change; every other difference is refused
    MAY_CHANGE: ClassVar[frozenset[str]] = MAY_CHANGE_ON_RESUME
    #: the most RK stages the algorithm supports (None: any)
    MAX_STAGES: ClassVar[Optional[int]] = None

    method: str = "midpoint"
    iterations: int = 1000
    inner_lr: float = 0.01
    inner_steps: int = 1
    step_rule: str = "tableau"
    first_order: bool = False
    adapt: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    log_interval: int = 1
    checkpoint_interval: int = 10
    time_budget_min: Optional[float] = None
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        # the library takes a method mapping ({"head.*": "midpoint", "*": "ralston"}) and adapt as a list of globs;
        # the config keeps their canonical strings, so checkpoints and resume comparisons hold plain data
        if isinstance(self.method, Mapping):
            from ..rk import method_name

            self.method = method_name(self.method)
        if isinstance(self.adapt, (list, tuple)):
            self.adapt = ",".join(self.adapt)

    # ---- validation --------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Fail before any work with one line naming the bad setting (extended by subclasses)."""
        validate_method(self.method, self.MAX_STAGES)
        check_positive("iterations", self.iterations, integer=True)
        check_positive("inner_lr", self.inner_lr)
        check_positive("inner_steps", self.inner_steps, integer=True)
        check_positive("log_interval", self.log_interval, integer=True)
        check_positive("checkpoint_interval", self.checkpoint_interval, integer=True)
        if self.threads is not None:
            check_positive("threads", self.threads, integer=True)
        if self.time_budget_min is not None:
            check_positive("time_budget_min", self.time_budget_min)
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"step_rule must be 'tableau' or 'fixed', got {self.step_rule!r}")
        if self.adapt is not None and (not isinstance(self.adapt, str) or not self.adapt.strip()):
            raise ValueError(f"adapt must be parameter glob(s) such as 'head.*' or None, got {self.adapt!r}")
        from ..rk import parse_adapt

        parse_adapt(self.adapt)
        resolve_device(self.device)

    @property
    def adapt_lr(self) -> float:
        """The method's own inner learning rate (used in training and at test time), for one method on every
        parameter; per-parameter methods and ``adapt`` have per-parameter rates (the trainers' ``adapt_lr``)."""
        from ..rk import parse_method_spec

        tab = parse_method_spec(self.method)
        if not hasattr(tab, "inner_lr") or self.adapt is not None:
            raise ValueError("per-parameter methods or adapt= have per-parameter rates: use the trainer's adapt_lr")
        return tab.inner_lr(self.inner_lr, self.step_rule)

    # ---- storage and comparison ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field, as plain data (tuples as lists); what checkpoints and ``config.json`` store."""
        return {f.name: _storable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BaseConfig":
        """Rebuild a config from :meth:`to_dict` (unknown keys refused, naming them)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "BaseConfig":
        """A copy with ``changes`` (unknown names refused)."""
        return dataclasses.replace(self, **changes)

    def check_resume(self, saved: Mapping[str, Any], what: str = "--resume") -> None:
        """Refuse to continue a run saved with ``saved`` (a :meth:`to_dict`) under different settings.

        Every field is compared except :attr:`MAY_CHANGE`; a field missing from an older checkpoint is not
        compared.

        Raises:
            ConfigMismatchError: one line naming the first differing field and both values.
        """
        mine = {k: _plain(v) for k, v in self.to_dict().items()}
        for name, value in mine.items():
            if name in self.MAY_CHANGE or name not in saved:
                continue
            if _plain(saved[name]) != value:
                may = ", ".join(sorted(self.MAY_CHANGE))
                raise ConfigMismatchError(f"{what}: the checkpoint was trained with {name}={saved[name]!r}, this run "
                                          f"asks for {name}={getattr(self, name)!r} (only {may} may change)")
