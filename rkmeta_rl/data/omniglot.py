"""Getting Omniglot (Lake, Salakhutdinov and Tenenbaum, 2015): the two official archives, checked and unpacked.

The archives are those ``torchvision.datasets.Omniglot`` downloads, from the dataset authors' repository
(https://github.com/brendenlake/omniglot, folder ``python/``), with the MD5 digests torchvision checks::

    images_background.zip   30 alphabets,  964 characters   md5 68d2efa1b9178cc56df9314c21c6e718
    images_evaluation.zip   20 alphabets,  659 characters   md5 6b91aef0f799c5bb55b94e3f2daec811

They unpack to ``<data root>/omniglot/images_background/`` and ``.../images_evaluation/``, the layout
:func:`rkmeta_rl.supervised.omniglot.load_omniglot` reads. Each archive is downloaded, verified and extracted
atomically on its own (see :mod:`rkmeta_rl.data.fetch`); a subset folder that exists is complete, so a second
call downloads nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .fetch import check_url_base, download_file, extract_zip_atomic
from .roots import default_data_root

__all__ = ["OMNIGLOT_URL_BASE", "OMNIGLOT_ARCHIVES", "OMNIGLOT_DIRNAME", "OmniglotArchive", "DownloadReport",
           "download_omniglot", "omniglot_root", "omniglot_command"]

log = logging.getLogger(__name__)

#: Where ``torchvision.datasets.Omniglot`` takes the archives from.
OMNIGLOT_URL_BASE = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
#: The dataset's folder inside a data root.
OMNIGLOT_DIRNAME = "omniglot"


@dataclass(frozen=True)
class OmniglotArchive:
    """One official archive: its file name, the folder it unpacks to, its MD5 digest."""

    filename: str
    folder: str
    md5: str


OMNIGLOT_ARCHIVES: tuple[OmniglotArchive, ...] = (
    OmniglotArchive("images_background.zip", "images_background", "68d2efa1b9178cc56df9314c21c6e718"),
    OmniglotArchive("images_evaluation.zip", "images_evaluation", "6b91aef0f799c5bb55b94e3f2daec811"),
)


@dataclass(frozen=True)
class DownloadReport:
    """What :func:`download_omniglot` did: the dataset folder and the archives it fetched (none when present)."""

    root: Path
    downloaded: tuple[str, ...]


def omniglot_command(root: str | os.PathLike[str] | None = None) -> str:
    """The shell command that gets Omniglot into ``root`` (the default data root when None)."""
    return "python -m rkmeta_rl.data omniglot" + (f" --root {root}" if root is not None else "")


def _is_complete(folder: Path) -> bool:
    return all((folder / a.folder).is_dir() for a in OMNIGLOT_ARCHIVES)


def _existing(base: Path) -> Path | None:
    """The complete Omniglot folder ``base`` is or holds (itself, ``omniglot-py/``, ``omniglot/``), or None."""
    for cand in (base, base / "omniglot-py", base / OMNIGLOT_DIRNAME):
        if _is_complete(cand):
            return cand
    return None


def download_omniglot(root: str | os.PathLike[str] | None = None, *, url_base: str | None = None,
                      progress: bool = True, md5s: Mapping[str, str] | None = None,
                      timeout: float = 60.0) -> DownloadReport:
    """Download, verify and extract whichever Omniglot archive is not yet unpacked under ``root/omniglot``.

    Args:
        root: the data root (default :func:`~rkmeta_rl.data.default_data_root`); created when missing. A
            folder that already is a complete Omniglot tree (see :func:`omniglot_root`) is used as it is.
        url_base: where the archives are (``<url_base>/images_background.zip``, ...); default
            :data:`OMNIGLOT_URL_BASE`. A mirror must serve the same files (the checksums are checked).
        progress: tqdm bars while downloading.
        md5s: ``{archive file name: md5}`` overriding the official digests (tests serving their own archives).
        timeout: seconds a connection or a read may block.

    Returns:
        :class:`DownloadReport`; ``downloaded`` is empty when everything was already there.

    Raises:
        ValueError: a malformed ``url_base``.
        DownloadError / ChecksumError: a failed, truncated or corrupted download, or an unreadable archive; the
            message names the file (and both digests). No partial folder or file is left behind.
    """
    base = check_url_base(url_base if url_base is not None else OMNIGLOT_URL_BASE)
    data_root = Path(root).expanduser() if root is not None else default_data_root()
    present = _existing(data_root)
    if present is not None:
        return DownloadReport(present, ())
    folder = data_root / OMNIGLOT_DIRNAME
    done: list[str] = []
    todo = [a for a in OMNIGLOT_ARCHIVES if not (folder / a.folder).is_dir()]
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    if todo:
        folder.mkdir(parents=True, exist_ok=True)
    try:
        for a in todo:
            done.append(_fetch_one(a, folder, base, (md5s or {}).get(a.filename, a.md5), progress, timeout))
    except BaseException:
        for p in created:  # folders this call created and left empty
            try:
                p.rmdir()
            except OSError:
                break
        raise
    return DownloadReport(folder, tuple(done))


def _fetch_one(a: OmniglotArchive, folder: Path, base: str, md5: str, progress: bool, timeout: float) -> str:
    """Download, verify and unpack one archive into ``folder``; returns its file name."""
    # a private folder per call, so that concurrent calls (e.g. every rank of a torchrun job) never share files
    work = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    try:
        download_file(f"{base}/{a.filename}", work / a.filename, md5, progress=progress, timeout=timeout)
        extract_zip_atomic(work / a.filename, folder / a.folder, inner=a.folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("Omniglot %s ready in %s", a.folder, folder / a.folder)
    return a.filename


def omniglot_root(root: str | os.PathLike[str] | None = None, *, download: bool = False,
                  url_base: str | None = None, progress: bool = True) -> Path:
    """The Omniglot dataset folder (the one holding ``images_background/`` and ``images_evaluation/``).

    ``root`` is a data root (the dataset is then ``root/omniglot``) or an Omniglot folder itself (the
    original layout, or torchvision's ``omniglot-py`` or the folder holding it): it is returned as is.

    Args:
        root: as above; default :func:`~rkmeta_rl.data.default_data_root`.
        download: fetch the archives when the dataset is missing (:func:`download_omniglot`).
        url_base: mirror for the download.
        progress: progress bars while downloading.

    Raises:
        FileNotFoundError: the dataset is missing and ``download`` is False; the message gives the command that
            gets it.
    """
    base = Path(root).expanduser() if root is not None else default_data_root()
    present = _existing(base)
    if present is not None:
        return present
    folder = base / OMNIGLOT_DIRNAME
    if download:
        return download_omniglot(base, url_base=url_base, progress=progress).root
    raise FileNotFoundError(f"Omniglot not found in {base} (expected {folder}/images_background and "
                            f"images_evaluation); get it with: {omniglot_command(root)}")
