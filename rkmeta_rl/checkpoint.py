"""Atomic checkpoints: a crash mid-write never leaves a corrupt latest checkpoint."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "LATEST", "FINAL"]

#: File name of the rolling checkpoint inside a run directory.
LATEST = "checkpoint_latest.pt"
#: File name of the final checkpoint inside a run directory.
FINAL = "checkpoint_final.pt"


def save_checkpoint(path: str, state: dict[str, Any]) -> str:
    """Write ``state`` with ``torch.save`` to a temporary file in the same folder, fsync it, then rename.

    ``os.replace`` is atomic on POSIX and Windows, so ``path`` always holds either the previous complete
    checkpoint or the new complete one.

    Returns:
        ``path``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: naming the path when there is none.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=False)


def latest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint ``--resume`` continues from: the rolling one, else the final one, else ``None``."""
    for name in (LATEST, FINAL):
        p = os.path.join(run_dir, name)
        if os.path.isfile(p):
            return p
    return None
