"""Verified, atomic checkpoints; a run folder keeps the last two.

File format: the bytes of ``torch.save(state)`` followed by a 46-byte trailer, ``b"RKMETA-SHA256:"`` and the
SHA-256 digest of those bytes. ``torch.load`` reads such a file directly (the zip reader ignores the trailer),
and :func:`load_checkpoint` verifies the digest first, so a truncated or damaged file is named, never silently
half-read. Writes go through :func:`rkmeta_rl.utils.atomic_write` (temporary file, fsync, rename).

In a run folder, :func:`save_checkpoint` of ``checkpoint_latest.pt`` first renames the existing latest to
``checkpoint_previous.pt``; :func:`load_latest` takes the latest one that verifies and says (a warning naming
the damaged file) when it had to fall back to the previous one.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from typing import Any

import torch

from .errors import CheckpointError
from .utils import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "load_latest", "checkpoint_candidates",
           "LATEST", "PREVIOUS", "FINAL", "CheckpointError"]

#: File name of the rolling checkpoint inside a run directory.
LATEST = "checkpoint_latest.pt"
#: The rolling checkpoint before the latest one (kept so a damaged latest one costs one interval).
PREVIOUS = "checkpoint_previous.pt"
#: File name of the final checkpoint inside a run directory.
FINAL = "checkpoint_final.pt"

_MAGIC = b"RKMETA-SHA256:"
_TRAILER = len(_MAGIC) + 32


def save_checkpoint(path: str, state: dict[str, Any]) -> str:
    """Write ``state`` (``torch.save`` plus the checksum trailer) atomically to ``path``.

    Writing :data:`LATEST` first moves an existing one to :data:`PREVIOUS` (the last two are kept).

    Returns:
        ``path``.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    raw = buf.getvalue()
    payload = raw + _MAGIC + hashlib.sha256(raw).digest()
    if os.path.basename(path) == LATEST and os.path.isfile(path):
        os.replace(path, os.path.join(os.path.dirname(path), PREVIOUS))
    return atomic_write(path, lambda fh: fh.write(payload))


def load_checkpoint(path: str, map_location: str | torch.device = "cpu", weights_only: bool = False
                    ) -> dict[str, Any]:
    """Load and verify a checkpoint written by :func:`save_checkpoint` (files without the trailer, from older
    versions, are loaded unverified).

    Raises:
        FileNotFoundError: naming the path when there is none.
        CheckpointError: naming the path when the file is truncated, damaged or not a checkpoint (one line).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) > _TRAILER and data[-_TRAILER:-32] == _MAGIC:
        data, digest = data[:-_TRAILER], data[-32:]
        if hashlib.sha256(data).digest() != digest:
            raise CheckpointError(f"checkpoint {path} is damaged (its SHA-256 checksum does not match)")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=weights_only)
    except Exception as err:  # noqa: BLE001 - any unpickling/zip error means: not a readable checkpoint
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({len(data)} bytes; {first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(state).__name__}, not a dict")
    return state


def checkpoint_candidates(run_dir: str) -> list[str]:
    """The checkpoint files of ``run_dir`` in the order ``--resume`` tries them: latest, previous, final."""
    return [p for name in (LATEST, PREVIOUS, FINAL) if os.path.isfile(p := os.path.join(run_dir, name))]


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint file of ``run_dir`` (unverified), or ``None``."""
    found = checkpoint_candidates(run_dir)
    return found[0] if found else None


def load_latest(run_dir: str, map_location: str | torch.device = "cpu") -> tuple[str, dict[str, Any]]:
    """Load the newest checkpoint of ``run_dir`` that verifies; a damaged newer one is named in a warning.

    The final checkpoint is newer than the rolling ones when it holds more iterations (a finished run).

    Returns:
        ``(path, state)``.

    Raises:
        FileNotFoundError: no checkpoint in ``run_dir``.
        CheckpointError: none of them verifies (every damaged file named).
    """
    found = checkpoint_candidates(run_dir)
    if not found:
        raise FileNotFoundError(f"--resume: no checkpoint in {run_dir}")
    good: list[tuple[str, dict[str, Any]]] = []
    bad: list[str] = []
    for path in found:
        try:
            good.append((path, load_checkpoint(path, map_location)))
        except CheckpointError as err:
            bad.append(str(err))
    if not good:
        raise CheckpointError("no usable checkpoint: " + "; ".join(bad))
    if bad:
        warnings.warn(f"{bad[0]}; using {good[0][0]} instead", RuntimeWarning, stacklevel=2)
    return max(good, key=lambda g: int(g[1].get("num_iterations", -1)))
