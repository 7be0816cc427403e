"""The exceptions every trainer raises (one type per kind of failure)."""

from __future__ import annotations

import signal

__all__ = ["NonFiniteError", "ConfigMismatchError", "CheckpointError", "RunDirError", "TrainingInterrupted",
           "EXIT_CODES"]


class NonFiniteError(RuntimeError):
    """A loss, statistic or meta-gradient became NaN or infinite; the last good checkpoint is left untouched."""


class ConfigMismatchError(ValueError):
    """A resumed or loaded run asks for a setting that differs from its checkpoint's (named with both values)."""


class CheckpointError(ValueError):
    """A checkpoint file is truncated, damaged, or not a checkpoint of the expected kind (the file is named)."""


class RunDirError(ValueError):
    """The run folder cannot be used: not creatable, under a regular file, or holding another run."""


#: Exit codes of the command-line trainers after a signal: the shell convention 128 + signal number.
EXIT_CODES: dict[int, int] = {int(signal.SIGINT): 130, int(signal.SIGTERM): 143}


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT arrived; training stopped after the current iteration and the checkpoint was written.

    Attributes:
        signum: the signal number.
        exit_code: what the command-line trainers exit with (:data:`EXIT_CODES`: 143 for SIGTERM, 130 for
            SIGINT).
        checkpoint: the checkpoint written, or ``None`` without a run folder.
    """

    def __init__(self, signum: int, iteration: int, checkpoint: str | None) -> None:
        self.signum = int(signum)
        self.exit_code = EXIT_CODES.get(self.signum, 128 + self.signum)
        self.checkpoint = checkpoint
        name = signal.Signals(self.signum).name
        where = f"checkpoint written: {checkpoint}" if checkpoint else "no run folder, nothing written"
        super().__init__(f"{name} received: stopped after iteration {iteration}; {where}; continue with --resume")
