"""On-disk caches of preprocessed image arrays (Omniglot, MiniImagenet): where they live, how they are keyed,
how they are built (progress bar, optional worker processes) and how they are written (atomically).

Decoding tens of thousands of PNG/JPEG files takes tens of seconds; the decoded ``uint8`` arrays are kept in
one ``.npz`` file per dataset split in a user cache directory, never beside the (possibly read-only) data:

* directory: the ``cache_dir`` argument, else ``$RKMETA_CACHE``, else ``$XDG_CACHE_HOME/rkmeta_rl``, else
  ``~/.cache/rkmeta_rl``;
* file name: ``<prefix>-<sha256 of the key parts>[:20].npz``, where the key parts name the data root (resolved
  absolute path), the preprocessing (image size, format version) and a content fingerprint (file count,
  total bytes, hash of the relative file names), so a changed dataset or preprocessing builds a new file;
* writing: a temporary file in the cache directory, flushed and ``fsync``-ed, then ``os.replace`` onto the
  final name, so a reader never sees a half-written cache and concurrent builders do not corrupt it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "default_cache_dir", "resolve_cache_dir", "cache_file", "file_fingerprint", "load_or_build",
    "map_with_progress",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def default_cache_dir() -> Path:
    """``$RKMETA_CACHE``, else ``$XDG_CACHE_HOME/rkmeta_rl``, else ``~/.cache/rkmeta_rl`` (not created)."""
    env = os.environ.get("RKMETA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rkmeta_rl"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None, data_root: str | os.PathLike[str]) -> Path:
    """The absolute cache directory to use, refusing any directory at or below ``data_root``.

    Raises:
        ValueError: if the cache directory would lie inside the data folder (the data is read-only input).
    """
    cdir = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()).resolve()
    root = Path(data_root).expanduser().resolve()
    if cdir == root or root in cdir.parents:
        raise ValueError(f"cache directory {cdir} lies inside the data folder {root}; caches are never written "
                         "next to the data: pass cache_dir=... or set $RKMETA_CACHE to a directory elsewhere")
    return cdir


def cache_file(cache_dir: Path, prefix: str, key_parts: Mapping[str, object]) -> Path:
    """``cache_dir / f"{prefix}-{digest}.npz"`` with ``digest`` the sha256 of the sorted ``key_parts``."""
    text = "\n".join(f"{k}={key_parts[k]!r}" for k in sorted(key_parts))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]
    return cache_dir / f"{prefix}-{digest}.npz"


def file_fingerprint(root: Path, files: Sequence[Path]) -> str:
    """A cheap content fingerprint of ``files``: their count, total size in bytes and the hash of their names
    relative to ``root`` (one ``stat`` per file, no reading)."""
    h = hashlib.sha256()
    total = 0
    for f in files:
        h.update(str(f.relative_to(root)).encode("utf-8"))
        h.update(b"\0")
        total += f.stat().st_size
    return f"n={len(files)};bytes={total};names={h.hexdigest()[:16]}"


def _write_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache is as readable as the data it derives from
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_or_build(path: Path, build: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays stored at ``path``, building and atomically writing them first when absent or unreadable.

    Args:
        path: the ``.npz`` cache file (see :func:`cache_file`).
        build: returns ``{name: array}`` to store; called only on a cache miss.

    Returns:
        ``{name: array}`` read from (or just written to) the cache.
    """
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:  # truncated or foreign file: rebuild it
            log.warning("unreadable cache %s (%s); rebuilding", path, err)
    arrays = {k: np.ascontiguousarray(v) for k, v in build().items()}
    _write_atomic(path, arrays)
    log.info("wrote cache %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return arrays


def map_with_progress(fn: Callable[[T], R], items: Iterable[T], *, total: int, workers: int = 1,
                      desc: str = "", progress: bool = True, chunksize: int = 256) -> list[R]:
    """``[fn(x) for x in items]`` with a tqdm progress bar, in ``workers`` processes when ``workers > 1``
    (``fn`` must then be picklable: a module-level function or a ``functools.partial`` of one)."""
    bar = tqdm(total=total, desc=desc, disable=not progress, unit="img", leave=False)
    out: list[R] = []
    try:
        if workers <= 1:
            for x in items:
                out.append(fn(x))
                bar.update(1)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for r in pool.map(fn, items, chunksize=chunksize):
                    out.append(r)
                    bar.update(1)
    finally:
        bar.close()
    return out
