"""Logging through Stable-Baselines3's logger (``record`` / ``dump`` under ``train/``, ``eval/``, ``time/``...).

SB3's CSV writer truncates ``progress.csv`` when opened; :func:`make_logger` with ``resume=True`` first moves
an existing file aside (``progress.before_<n>.csv``) so nothing logged before a crash is lost.
"""

from __future__ import annotations

import os
from typing import Sequence

from stable_baselines3.common.logger import Logger, configure

__all__ = ["make_logger", "read_scalars"]


def make_logger(logdir: str | None, formats: Sequence[str] = ("stdout", "csv", "tensorboard"),
                resume: bool = False, verbose: bool = True) -> Logger:
    """An SB3 :class:`Logger` writing to ``logdir`` (stdout, CSV, TensorBoard by default).

    Args:
        logdir: run directory; ``None`` logs nowhere.
        formats: SB3 format strings.
        resume: keep an earlier ``progress.csv`` by renaming it before the new one is opened.
        verbose: keep the ``stdout`` format (drop it for quiet runs, e.g. with a progress bar).
    """
    if logdir is None:
        return Logger(folder=None, output_formats=[])
    fmts = [f for f in formats if verbose or f != "stdout"]
    csv_path = os.path.join(logdir, "progress.csv")
    if resume and "csv" in fmts and os.path.isfile(csv_path) and os.path.getsize(csv_path) > 0:
        n = 0
        while os.path.exists(os.path.join(logdir, f"progress.before_{n}.csv")):
            n += 1
        os.replace(csv_path, os.path.join(logdir, f"progress.before_{n}.csv"))
    return configure(logdir, list(fmts))


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
