"""Preemption: SIGTERM (what cluster schedulers send) and SIGINT (Ctrl-C) end training cleanly.

While :class:`StopSignals` is active, the first SIGTERM or SIGINT is only noted; the training loop finishes the
current iteration, writes its checkpoint and raises :class:`~rkmeta_rl.common.errors.TrainingInterrupted`
(the command-line trainers exit with 143 or 130). A second SIGINT interrupts at once, as Python does by default.
Handlers are installed only in the main thread and restored on exit.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopSignals"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Context manager noting SIGTERM / SIGINT in :attr:`received` instead of dying mid-iteration."""

    def __init__(self) -> None:
        self.received: int = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = int(signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[int(sig)] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
