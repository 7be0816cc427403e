"""The one flow of every training command: flags -> config -> validation -> (torchrun) -> algorithm -> learn ->
metrics. Scripts and console entry points supply only what differs (:class:`Command`).

Errors a user can fix are one line, ``error: ...``, with exit status 1, raised before any work. SIGTERM and
SIGINT end training after the current iteration with the checkpoint written, a line on stderr saying so, and
exit status 143 (SIGTERM) or 130 (SIGINT); ``--resume`` then continues exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..checkpoint import load_latest
from ..common.allocator import retain_freed_memory
from ..common.base import CHECKPOINT_PREFIX, BaseMetaAlgorithm
from ..common.callbacks import MaybeCallback
from ..common.config import BaseConfig
from ..data.fetch import DownloadError
from ..distributed import DistInfo, destroy, init_distributed, split_batch
from ..envs.protocol import TaskFamilyError
from ..errors import CheckpointError, NonFiniteError, TrainingInterrupted
from ..utils import default_threads, set_threads
from .flags import in_flag_terms

__all__ = ["Command", "run_command", "add_run_flags", "USER_ERRORS"]

#: Exceptions that are the user's to fix: reported as one line, never as a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, TaskFamilyError,
                                                DownloadError)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every training command has besides its config's fields."""
    g = parser.add_argument_group("run")
    g.add_argument("--logdir", default=None, help="run folder (default: runs/<name of the setting>); a fresh run "
                   "refuses a folder that holds files")
    g.add_argument("--resume", action="store_true", help="continue the run in --logdir from its latest good "
                   "checkpoint (every training setting must be the same)")
    g.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="under torchrun: collective timeout (default $RKMETA_DIST_TIMEOUT or 120)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--verbose", action="store_true", help="print the logger table at every log row")


@dataclass
class Command:
    """What a training command supplies.

    Attributes:
        parser: its argument parser (config flags and :func:`add_run_flags` included).
        config: flags -> the resolved, unvalidated config.
        logdir: flags and config -> the default run folder.
        build: ``(args, config, dist, logdir)`` -> the algorithm (may load data; before any training).
        finish: ``(args, model)`` -> the metrics (final evaluation, figures, ``model.finish``).
        callbacks: ``(args, model)`` -> the command's callbacks (figures, videos).
        summary: metrics -> what is printed as the last line (JSON).
        algorithm: the class name of the algorithm ``build`` makes (``"MetaTRPO"``, ``"MetaTrainer"``): a
            ``--resume`` of a folder holding another algorithm's run is refused as such.
    """

    parser: argparse.ArgumentParser
    config: Callable[[argparse.Namespace], BaseConfig]
    logdir: Callable[[argparse.Namespace, BaseConfig], str]
    build: Callable[[argparse.Namespace, BaseConfig, DistInfo, str], BaseMetaAlgorithm]
    finish: Callable[[argparse.Namespace, Any], dict[str, Any]]
    callbacks: Callable[[argparse.Namespace, Any], MaybeCallback] = field(default=lambda args, model: None)
    summary: Callable[[dict[str, Any]], dict[str, Any]] = field(
        default=lambda m: {k: v for k, v in m.items() if k != "history"})
    algorithm: str | None = None


def _check_resume(cmd: Command, config: BaseConfig, logdir: str) -> None:
    """Refuse ``--resume`` of ``logdir`` when its latest good checkpoint is another algorithm's, or was trained
    with other settings (:meth:`BaseConfig.check_resume`)."""
    path, state = load_latest(logdir)
    fmt = state.get("format")
    kind = fmt.split("/")[0][len(CHECKPOINT_PREFIX):] if isinstance(fmt, str) and \
        fmt.startswith(CHECKPOINT_PREFIX) else None
    if cmd.algorithm is not None and kind != cmd.algorithm:
        what = f"a {kind} checkpoint" if kind else "not an rkmeta_rl checkpoint"
        raise CheckpointError(f"--resume: {path} is {what}, not a {cmd.algorithm} one: --logdir holds another "
                              f"command's run")
    config.check_resume(state["config"])


def run_command(cmd: Command, argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, validate, train and report (under torchrun: this rank's part of a data-parallel run)."""
    args = cmd.parser.parse_args(argv)
    args.wall_start = time.perf_counter()  # for the commands' wall-time metric
    try:
        config = cmd.config(args)
        config.validate()
        set_threads(default_threads() if config.threads is None else config.threads)
        retain_freed_memory()  # no page faults for every large temporary (measured: 5-7 % of an iteration)
        dist = init_distributed(config.device, timeout_s=args.dist_timeout)
    except USER_ERRORS as err:
        destroy()
        sys.exit(f"error: {in_flag_terms(str(err))}")
    try:
        try:
            split_batch(getattr(config, "meta_batch_size", dist.world_size), dist.rank, dist.world_size)
            logdir = args.logdir or cmd.logdir(args, config)
            if args.resume:  # compare the kind and the settings before any work (data loading included)
                _check_resume(cmd, config, logdir)
            model = cmd.build(args, config, dist, logdir)
        except USER_ERRORS as err:
            sys.exit(f"error: {err}")
        try:
            model.learn(callback=cmd.callbacks(args, model), progress_bar=not args.no_progress)
        except TrainingInterrupted as err:  # the checkpoint is written and the base logged it (on stderr)
            model.close()
            raise SystemExit(err.exit_code) from None
        except NonFiniteError as err:
            model.close()
            sys.exit(f"error: {err}")
        metrics = cmd.finish(args, model)
        if dist.is_main:
            print(json.dumps(cmd.summary(metrics)))
        return metrics
    finally:
        destroy()
