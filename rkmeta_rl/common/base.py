"""``BaseMetaAlgorithm``: what every meta-training algorithm shares, in the spirit of Stable-Baselines3's
``BaseAlgorithm``.

The base owns :meth:`~BaseMetaAlgorithm.learn` (iterations, callbacks, the SB3 logger, the progress bar, the
time budget, the non-finite stop, SIGTERM / SIGINT), the run folder (:mod:`rkmeta_rl.common.run_dir`: a fresh
run never writes into a used folder; ``config.json``), verified checkpoints with an exact resume (every field of
the config compared, :meth:`~rkmeta_rl.common.config.BaseConfig.check_resume`), ``save`` / ``load``,
``get_parameters`` / ``set_parameters``, and rank 0's duties under torchrun. An algorithm implements only

* ``_setup_model()``: build its state from ``self.config`` (called by the constructor);
* ``train_iteration()``: one meta-iteration; increments ``num_iterations`` (and ``num_timesteps``) and returns
  its statistics as ``{"prefix/name": float}``;
* ``_state_dict()`` / ``_load_state_dict(state)``: its own state (parameters, optimiser, random streams);
* ``_parameters()``: the live meta-parameter tensors; ``_reseed(seed)``: reseed its random streams;

and optionally ``_log_extra(iteration)`` (evaluations and figures on logging iterations). A new outer update
(a PPO- or ProMP-style one) is one new module of this shape.

Under torchrun (:mod:`rkmeta_rl.distributed`) the constructor, :meth:`learn`, :meth:`save` and the run-folder
checkpoints are collective: every rank calls them in the same order; rank 0 alone logs and writes. Stop
decisions (callback, time budget, signals) are agreed by all ranks every iteration (one ``all_reduce``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping, TypeVar

import torch
from stable_baselines3.common.logger import Logger, TensorBoardOutputFormat
from stable_baselines3.common.utils import configure_logger
from tqdm.auto import tqdm

from ..checkpoint import FINAL, LATEST, latest_checkpoint, load_checkpoint, load_latest, save_checkpoint
from ..distributed import DistInfo, all_reduce_max, barrier, current_dist
from ..errors import CheckpointError, NonFiniteError, TrainingInterrupted
from ..logger import ITERATION_KEY, make_logger
from ..utils import resolve_device, set_threads, write_json_atomic
from .callbacks import MaybeCallback, as_callback
from .config import BaseConfig
from .run_dir import check_run_dir, write_run_config
from .signals import StopSignals

__all__ = ["BaseMetaAlgorithm", "CHECKPOINT_PREFIX"]

_Algo = TypeVar("_Algo", bound="BaseMetaAlgorithm")
_log = logging.getLogger("rkmeta_rl")

#: Every checkpoint's ``format`` starts with this, then the algorithm's name and a version.
CHECKPOINT_PREFIX = "rkmeta_rl."


class BaseMetaAlgorithm(ABC):
    """Meta-training with logging, callbacks, checkpoints, exact resume and safe run folders.

    Args:
        config: the algorithm's settings (validated here, before any work).
        logdir: run folder (checkpoints, ``progress.csv``, TensorBoard events, ``config.json``,
            ``metrics.json``); ``None`` keeps no run folder.
        resume: continue from ``logdir``'s latest good checkpoint (refused when a setting outside
            ``config.MAY_CHANGE`` differs). Without ``resume`` a ``logdir`` holding files is refused.
        verbose: 1 also prints the logger's table to stdout.
        dist: this process's place under torchrun (default: the initialised process group, if any).
        tensorboard_log: without a ``logdir``, a folder for TensorBoard runs (``<Name>_<n>`` inside, as SB3).
    """

    #: the algorithm's config dataclass
    config_class: ClassVar[type[BaseConfig]] = BaseConfig
    #: checkpoint format version of the algorithm's state
    format_version: ClassVar[int] = 2

    def __init__(self, config: BaseConfig, *, logdir: str | None = None, resume: bool = False, verbose: int = 0,
                 dist: DistInfo | None = None, tensorboard_log: str | None = None) -> None:
        config.validate()
        if resume and logdir is None:
            raise ValueError("resume needs a logdir")
        self.dist: DistInfo = dist if dist is not None else current_dist()
        if logdir is not None:
            check_run_dir(logdir, resume)
        self.config = config
        if config.threads is not None:
            set_threads(config.threads)
        self.device = resolve_device(config.device)
        self.logdir = logdir
        self.verbose = int(verbose)
        self.tensorboard_log = tensorboard_log
        self.num_iterations = 0
        self.num_timesteps = 0
        #: training seconds, accumulated across resumes
        self.elapsed = 0.0
        #: why the last :meth:`learn` stopped early: ``"time_budget"``, ``"callback"`` or ``None``
        self.stopped_by: str | None = None
        self._resumed_at: int | None = None
        self._latest_at: int | None = None
        self._logger: Logger | None = None
        self._setup_model()
        if resume:
            assert logdir is not None
            path, state = load_latest(logdir)
            self._restore(state, path, what="--resume")
            self._resumed_at = self._latest_at = self.num_iterations
        if logdir is not None and self.dist.distributed:
            barrier()  # every rank checked the folder before rank 0 writes into it
        if logdir is not None and self.dist.is_main:
            os.makedirs(logdir, exist_ok=True)
            write_run_config(logdir, type(self).__name__, self.config.to_dict(),
                             {"resumed_at": self._resumed_at, "world_size": self.dist.world_size})

    # ---- what an algorithm implements ------------------------------------------------------------------------
    @abstractmethod
    def _setup_model(self) -> None:
        """Build parameters, optimiser, random streams and samplers from ``self.config``."""

    @abstractmethod
    def train_iteration(self) -> dict[str, float]:
        """One meta-iteration; increments ``num_iterations``; returns ``{"prefix/name": value}``."""

    @abstractmethod
    def _state_dict(self) -> dict[str, Any]:
        """The algorithm's own state for an exact continuation (collective under torchrun)."""

    @abstractmethod
    def _load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`_state_dict`."""

    @abstractmethod
    def _parameters(self) -> dict[str, torch.Tensor]:
        """The live meta-parameter tensors."""

    @abstractmethod
    def _reseed(self, seed: int) -> None:
        """Reseed every random stream of training."""

    def _log_extra(self, iteration: int) -> None:
        """Record more on a logging iteration (evaluations, figures); default: nothing."""
        return None

    # ---- logger ----------------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files (rank 0; always true without data parallelism)."""
        return self.dist.is_main

    @property
    def logger(self) -> Logger:
        """The SB3 logger: the run folder's (stdout with ``verbose``, CSV, TensorBoard), else SB3's
        ``configure_logger`` with ``tensorboard_log``; writes nowhere on ranks other than 0."""
        if self._logger is None:
            if not self.dist.is_main:
                self._logger = Logger(folder=None, output_formats=[])
            elif self.logdir is not None:
                self._logger = make_logger(self.logdir, resume_at=self._resumed_at, verbose=bool(self.verbose))
            else:
                self._logger = configure_logger(self.verbose, self.tensorboard_log, type(self).__name__)
        return self._logger

    def set_logger(self, logger: Logger) -> None:
        """Use ``logger`` instead (SB3's ``set_logger``)."""
        self._logger = logger

    # ---- checkpoints -----------------------------------------------------------------------------------------
    @classmethod
    def checkpoint_format(cls) -> str:
        return f"{CHECKPOINT_PREFIX}{cls.__name__}/{cls.format_version}"

    def _checkpoint(self) -> dict[str, Any]:
        """The whole checkpoint: format, config, counters, and the algorithm's state (collective)."""
        state = self._state_dict()
        state.update({"format": self.checkpoint_format(), "config": self.config.to_dict(),
                      "num_iterations": self.num_iterations, "num_timesteps": self.num_timesteps,
                      "elapsed": self.elapsed, "world_size": self.dist.world_size})
        return state

    def save(self, path: str) -> str | None:
        """Write a verified checkpoint to ``path`` atomically (SB3's ``save``; what ``CheckpointCallback`` calls).
        Collective under torchrun: rank 0 writes. Returns the path on rank 0, else ``None``."""
        state = self._checkpoint()
        if not self.dist.is_main:
            return None
        return save_checkpoint(path, state)

    def _save_run(self, name: str = LATEST) -> str | None:
        """Checkpoint ``name`` in the run folder, if there is one. The latest one keeps its predecessor, and is
        not written twice at one iteration (so the predecessor stays an older one)."""
        if self.logdir is None:
            return None
        path = os.path.join(self.logdir, name)
        if name == LATEST and self._latest_at == self.num_iterations:
            return path
        self.save(path)
        if name == LATEST:
            self._latest_at = self.num_iterations
        return path

    @classmethod
    def _check_kind(cls, state: Mapping[str, Any], path: str) -> None:
        fmt = state.get("format")
        if not isinstance(fmt, str) or not fmt.startswith(CHECKPOINT_PREFIX):
            keys = ", ".join(sorted(map(str, state))[:6])
            raise CheckpointError(f"{path} is not an rkmeta_rl checkpoint (it holds keys {keys})")
        if fmt.split("/")[0] != cls.checkpoint_format().split("/")[0]:
            raise CheckpointError(f"{path} is a {fmt.split('/')[0][len(CHECKPOINT_PREFIX):]} checkpoint, not a "
                                  f"{cls.__name__} one")
        if int(fmt.split("/")[1]) != cls.format_version:
            raise CheckpointError(f"{path} has checkpoint format {fmt}, this version reads {cls.checkpoint_format()}")

    def _restore(self, state: Mapping[str, Any], path: str, what: str) -> None:
        """Verify the kind and the config of ``state``, then continue from it."""
        self._check_kind(state, path)
        self.config.check_resume(state["config"], what=what)
        self._load_state_dict(state)
        self.num_iterations = int(state["num_iterations"])
        self.num_timesteps = int(state["num_timesteps"])
        self.elapsed = float(state.get("elapsed", 0.0))

    @classmethod
    def _load_with(cls, path: str, overrides: dict[str, Any], make: Callable[[Any], _Algo]) -> _Algo:
        """The one load path: read and verify ``path``, check its kind, apply ``overrides`` (only the fields of
        ``config.MAY_CHANGE`` may differ from the saved ones), ``make(config)`` the model and restore its state.

        Raises:
            CheckpointError: ``path`` is damaged, or not a checkpoint of this algorithm (it says what it is).
            ConfigMismatchError: an override changes a training setting (named with both values).
        """
        state = load_checkpoint(path, weights_only=True)
        cls._check_kind(state, path)
        config = cls.config_class.from_dict(state["config"]).replace(**overrides)
        config.check_resume(state["config"], what=f"load({path})")
        model = make(config)
        model._restore(state, path, what=f"load({path})")
        return model

    # ---- parameters and seeding (SB3 API) --------------------------------------------------------------------
    def get_parameters(self) -> dict[str, torch.Tensor]:
        """Copies of the meta-parameters (on the CPU)."""
        return {k: v.detach().cpu().clone() for k, v in self._parameters().items()}

    def set_parameters(self, params: Mapping[str, torch.Tensor], exact_match: bool = True) -> None:
        """Copy ``params`` into the meta-parameters (``exact_match``: the names must be the same)."""
        own = self._parameters()
        if exact_match and set(params) != set(own):
            raise ValueError(f"set_parameters: expected parameters {sorted(own)}, got {sorted(params)}")
        with torch.no_grad():
            for k, v in params.items():
                if k not in own:
                    raise ValueError(f"set_parameters: unknown parameter {k!r}")
                own[k].copy_(torch.as_tensor(v).to(own[k]))

    def set_random_seed(self, seed: int | None = None) -> None:
        """Reseed every random stream of training (SB3's ``set_random_seed``; ``None``: the config's seed)."""
        self._reseed(self.config.seed if seed is None else int(seed))

    # ---- training --------------------------------------------------------------------------------------------
    def _check_finite(self, stats: Mapping[str, float], iteration: int) -> None:
        """Raise :class:`NonFiniteError` naming the statistics, the iteration and the last good checkpoint."""
        bad = [k for k, v in stats.items() if not math.isfinite(v)]
        if bad:
            last = latest_checkpoint(self.logdir) if self.logdir else None
            raise NonFiniteError(f"non-finite {', '.join(bad)} at iteration {iteration}; last good checkpoint: "
                                 f"{last or 'none written'}")

    def _agree(self, *flags: float) -> list[float]:
        """Every rank's maximum of ``flags`` (stop decisions are taken together)."""
        return all_reduce_max(list(flags)) if self.dist.distributed else list(flags)

    def learn(self, total_iterations: int | None = None, callback: MaybeCallback = None, progress_bar: bool = False
              ) -> "BaseMetaAlgorithm":
        """Meta-train.

        Args:
            total_iterations: iterations to run now (SB3's ``total_timesteps``); ``None``: until
                ``config.iterations`` in all (what a resumed run uses).
            callback: an SB3 ``BaseCallback`` / ``CallbackList``, a callable ``fn(model, stats)``, or a list
                (:mod:`rkmeta_rl.common.callbacks`); ``False`` from ``on_step`` stops training.
            progress_bar: show a tqdm bar (rank 0).

        Raises:
            NonFiniteError: a statistic became NaN or infinite (the last good checkpoint is named).
            TrainingInterrupted: SIGTERM or SIGINT; the checkpoint was written first.
        """
        target = self.config.iterations if total_iterations is None else self.num_iterations + int(total_iterations)
        cb = as_callback(callback)
        cb.init_callback(self)  # type: ignore[arg-type]
        cb.on_training_start(locals(), globals())
        self.stopped_by = None
        budget = None if self.config.time_budget_min is None else 60.0 * self.config.time_budget_min
        bar = tqdm(total=target, initial=self.num_iterations, disable=not (progress_bar and self.is_main),
                   desc=f"{type(self).__name__}[{self.config.method}]", unit="it", mininterval=1.0,
                   dynamic_ncols=True)
        acc: dict[str, float] = {}
        counts: dict[str, int] = {}  # per key: a statistic may come from some iterations only
        t_log, it_log = time.perf_counter(), self.num_iterations
        start = time.perf_counter() - self.elapsed
        try:
            with StopSignals() as signals:
                while self.num_iterations < target:
                    stats = self.train_iteration()
                    it = self.num_iterations
                    self.elapsed = time.perf_counter() - start
                    self._check_finite(stats, it)
                    for k, v in stats.items():
                        acc[k] = acc.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
                    dump = it % self.config.log_interval == 0 or it == target
                    if dump:
                        now = time.perf_counter()
                        for k, v in acc.items():
                            self.logger.record(k, v / counts[k])
                        self.logger.record(ITERATION_KEY, it)
                        self.logger.record("time/elapsed_s", self.elapsed)
                        self.logger.record("time/it_per_s", (it - it_log) / max(now - t_log, 1e-9))
                        self._log_extra(it)
                        acc, counts, t_log, it_log = {}, {}, now, it
                    cb.update_locals({"stats": stats, "iteration": it})
                    go_on = cb.on_step()
                    if dump:
                        self.logger.dump(it)
                    bar.update(1)
                    if it % self.config.checkpoint_interval == 0:
                        self._save_run(LATEST)
                    over = budget is not None and self.elapsed >= budget
                    stop_cb, over, signum = self._agree(float(not go_on), float(over), float(signals.received))
                    if signum:
                        err = TrainingInterrupted(int(signum), it, self._save_run(LATEST))
                        if self.is_main:
                            _log.warning("%s", err)
                        raise err
                    if stop_cb or over:
                        self.stopped_by = "callback" if stop_cb else "time_budget"
                        break
        finally:
            bar.close()
        cb.on_training_end()
        self._save_run(LATEST)
        self._save_run(FINAL)
        return self

    # ---- the end of a run ------------------------------------------------------------------------------------
    def finish(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """End a run: ``metrics.json`` in the run folder (rank 0, atomically), TensorBoard hparams (the
        config's scalar settings) with the final scalar metrics (``final/<name>``), then close the logger."""
        out = dict(metrics)
        if self.is_main:
            if self.logdir is not None:
                write_json_atomic(os.path.join(self.logdir, "metrics.json"), out)
            scalars = {f"final/{k}": float(v) for k, v in out.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
            hparams = {k: v for k, v in self.config.to_dict().items()
                       if isinstance(v, (int, float, str, bool)) and v is not None}
            _write_hparams(self.logger, hparams, scalars, self.num_iterations)
        self.close()
        return out

    def close(self) -> None:
        """Close the logger's files (the model stays usable)."""
        if self._logger is not None:
            self._logger.close()


def _write_hparams(logger: Logger, hparams: Mapping[str, Any], metrics: Mapping[str, float], step: int) -> None:
    """TensorBoard's HParams entry (settings and final metrics) and the metrics as scalars, written to the
    logger's TensorBoard output only (SB3's ``HParam`` through ``dump`` would add an empty ``progress.csv`` row)."""
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    for fmt in logger.output_formats:
        if isinstance(fmt, TensorBoardOutputFormat):
            for k, v in metrics.items():
                fmt.writer.add_scalar(k, v, step)
            for summary in hparams_summary(dict(hparams), dict(metrics)):
                fmt.writer.file_writer.add_summary(summary)
            fmt.writer.flush()
