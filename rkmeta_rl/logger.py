"""Logging through Stable-Baselines3's logger (``record`` / ``dump`` under ``rollout/``, ``train/``, ``eval/``,
``time/``), continuous across resumes.

:func:`make_logger` with ``resume_at=N`` keeps one ``progress.csv``: the rows of iterations ``<= N`` are kept
(rows logged after the checkpoint a run resumes from are dropped, so no iteration appears twice) and new rows
are appended; TensorBoard's writer purges the events of steps ``> N`` the same way (``purge_step``).
"""

from __future__ import annotations

import csv
import io
import os
import sys
from typing import Sequence

from stable_baselines3.common.logger import (
    CSVOutputFormat,
    HumanOutputFormat,
    KVWriter,
    Logger,
    TensorBoardOutputFormat,
)

from .utils import atomic_write

__all__ = ["make_logger", "read_scalars", "read_progress", "ITERATION_KEY"]

#: The column of ``progress.csv`` (and the ``time/`` scalar) holding the meta-iteration.
ITERATION_KEY = "time/iterations"


class _ResumableCSV(CSVOutputFormat):
    """SB3's CSV writer continuing an existing ``progress.csv`` from iteration ``resume_at``."""

    def __init__(self, filename: str, resume_at: int | None) -> None:
        if resume_at is None or not os.path.isfile(filename) or os.path.getsize(filename) == 0:
            super().__init__(filename)
            return
        header, rows = read_progress(filename)
        col = header.index(ITERATION_KEY) if ITERATION_KEY in header else None
        kept = [r for r in rows if col is None or (r[col] != "" and float(r[col]) <= resume_at)]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(kept)
        atomic_write(filename, lambda fh: fh.write(text.getvalue()), binary=False)
        self.file = open(filename, "r+")  # noqa: SIM115 - closed by close(); SB3 rewrites the header in place
        self.file.seek(0, os.SEEK_END)
        self.keys = list(header)
        self.separator = ","
        self.quotechar = '"'


class _ResumableTensorBoard(TensorBoardOutputFormat):
    """SB3's TensorBoard writer whose new event file purges the steps after ``resume_at``."""

    def __init__(self, folder: str, resume_at: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=folder, purge_step=None if resume_at is None else resume_at + 1)
        self._is_closed = False


def read_progress(filename: str) -> tuple[list[str], list[list[str]]]:
    """``progress.csv`` as ``(header, rows)`` (strings, as written)."""
    with open(filename, newline="") as fh:
        rows = list(csv.reader(fh))
    return (rows[0], rows[1:]) if rows else ([], [])


def make_logger(logdir: str | None, formats: Sequence[str] = ("stdout", "csv", "tensorboard"),
                resume_at: int | None = None, verbose: bool = True) -> Logger:
    """An SB3 :class:`Logger` writing to ``logdir`` (stdout, CSV, TensorBoard by default).

    Args:
        logdir: run directory; ``None`` logs nowhere.
        formats: SB3 format strings among ``stdout``, ``csv``, ``tensorboard``.
        resume_at: the iteration a resumed run continues from: ``progress.csv`` and the TensorBoard events
            continue from there (later rows/steps dropped); ``None`` for a fresh run.
        verbose: keep the ``stdout`` format (drop it for quiet runs, e.g. with a progress bar).
    """
    if logdir is None:
        return Logger(folder=None, output_formats=[])
    os.makedirs(logdir, exist_ok=True)
    outputs: list[KVWriter] = []
    for fmt in formats:
        if fmt == "stdout" and verbose:
            outputs.append(HumanOutputFormat(sys.stdout))
        elif fmt == "csv":
            outputs.append(_ResumableCSV(os.path.join(logdir, "progress.csv"), resume_at))
        elif fmt == "tensorboard":
            outputs.append(_ResumableTensorBoard(logdir, resume_at))
        elif fmt != "stdout":
            raise ValueError(f"unknown log format {fmt!r} (stdout, csv, tensorboard)")
    return Logger(folder=logdir, output_formats=outputs)


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    """Read every scalar of the TensorBoard event files under ``logdir``: ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for root, _, files in os.walk(logdir):
        if not any(f.startswith("events.out.tfevents") for f in files):
            continue
        acc = EventAccumulator(root, size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    for v in out.values():
        v.sort()
    return out
