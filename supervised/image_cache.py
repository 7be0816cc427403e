"""On-disk caches of preprocessed image arrays (Omniglot, MiniImagenet): where they live, how they are keyed,
how they are built (progress bar, optional worker processes) and how they are written (atomically).

Decoding tens of thousands of PNG/JPEG files takes tens of seconds; the decoded ``uint8`` arrays are kept in
one ``.npz`` file per dataset split in a user cache directory, never beside the (possibly read-only) data:

* directory: the ``cache_dir`` argument, else ``$RKMETA_CACHE``, else ``$XDG_CACHE_HOME/rkmeta_rl``, else
  ``~/.cache/rkmeta_rl``;
* file name: ``<prefix>-<sha256 of the key parts>[:20].npz``, where the key parts name the data root (resolved
  absolute path), the preprocessing (image size, format version) and a fingerprint of the files: for each
  file, its relative name, size, modification time (ns) and inode number. Editing, replacing, adding,
  removing, renaming or swapping image files changes it (a rewrite changes the modification time, a rename
  swap the inode), so a changed dataset or preprocessing builds a new file instead of serving stale images;
* reading: a cache that cannot be read (truncated, corrupted, foreign) or that holds arrays of the wrong
  shape is rebuilt, with a warning naming it;
* writing: a temporary file in the cache directory, flushed and ``fsync``-ed, then ``os.replace`` onto the
  final name, so a reader never sees a half-written cache and concurrent builders do not corrupt it. The
  directory is checked writable (:func:`check_writable_dir`) before any image is decoded.

Image-decoding errors are raised as :class:`ImageDecodeError`, naming the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np
from tqdm.auto import tqdm

from rkmeta_rl.utils import atomic_write

__all__ = [
    "ImageDecodeError", "default_cache_dir", "resolve_cache_dir", "check_writable_dir", "cache_file",
    "file_fingerprint", "load_or_build", "map_with_progress",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class ImageDecodeError(ValueError):
    """An image file could not be decoded; the message names the file."""


def decode_image(path: str | os.PathLike[str], mode: str, image_size: int, what: str) -> np.ndarray:
    """The image at ``path`` in Pillow ``mode`` (``"L"``: ``uint8 [s, s]``; ``"RGB"``: ``uint8 [s, s, 3]``), LANCZOS-
    resized to ``s = image_size`` when its size differs. The conversion comes first: Pillow resizes 1-bit images
    nearest-neighbour whatever filter is asked.

    Raises:
        ImageDecodeError: the file cannot be decoded (truncated, not an image); the message names ``what`` and it.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            img = im.convert(mode)
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"cannot decode {what} image {path}: {type(err).__name__}: {err}") from None


def images_check(shape: tuple[int, ...]) -> Callable[[Mapping[str, np.ndarray]], str | None]:
    """The ``check`` for :func:`load_or_build` of an ``images`` cache: ``uint8`` of exactly ``shape``, else the
    reason the cache is rebuilt."""

    def check(arrays: Mapping[str, np.ndarray]) -> str | None:
        imgs = arrays.get("images")
        if imgs is None or imgs.shape != shape or imgs.dtype != np.uint8:
            return f"expected uint8 images of shape {shape}, found {None if imgs is None else (imgs.dtype, imgs.shape)}"
        return None

    return check


def check_writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` (absolute) after checking that it is, or can be created as, a writable folder; creates nothing.

    Call it before any long work (decoding, training) so that a bad folder fails at once.

    Args:
        path: the folder.
        what: how the user names it in the message, e.g. ``"--cache-dir"``.

    Raises:
        ValueError: one line naming ``what`` and the path: it is a file, lies under a file, or is not writable.
    """
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {p} is a file, not a folder")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != p and not probe.is_dir():
        raise ValueError(f"{what} {p} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {p} is not writable: no write permission in {probe}")
    return p


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
    """A fingerprint of ``files`` from one ``stat`` each (no reading): the sha256 of every file's name relative
    to ``root``, size, modification time in nanoseconds and inode number, with the file count in clear."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode("utf-8"))
    return f"n={len(files)};stat={h.hexdigest()[:32]}"


def _write_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    # a cache is as readable as the data it derives from (0644), not private like a temporary file
    atomic_write(str(path), lambda fh: np.savez(fh, **arrays), mode=0o644)


def load_or_build(path: Path, build: Callable[[], Mapping[str, np.ndarray]],
                  check: Callable[[Mapping[str, np.ndarray]], str | None] | None = None) -> dict[str, np.ndarray]:
    """The arrays stored at ``path``, building and atomically writing them first when absent, unreadable or
    rejected by ``check``.

    Args:
        path: the ``.npz`` cache file (see :func:`cache_file`).
        build: returns ``{name: array}`` to store; called only on a cache miss.
        check: returns why stored arrays are unusable (e.g. a wrong shape), or None when they are fine.

    Returns:
        ``{name: array}`` read from (or just written to) the cache.

    Raises:
        ValueError: the cache directory is not writable (checked before ``build`` runs), or the freshly built
            arrays fail ``check``.
    """
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            why = check(arrays) if check is not None else None
            if why is None:
                return arrays
            log.warning("cache %s is unusable (%s); rebuilding", path, why)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
            log.warning("unreadable cache %s (%s: %s); rebuilding", path, type(err).__name__, err)
    check_writable_dir(path.parent, "cache directory")
    arrays = {k: np.ascontiguousarray(v) for k, v in build().items()}
    if check is not None and (why := check(arrays)) is not None:
        raise ValueError(f"freshly built arrays for {path} are wrong: {why}")
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
