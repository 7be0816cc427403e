"""Fetching a dataset archive: stream it over HTTP(S) with a progress bar and a checksum, extract it atomically.

Nothing here is dataset-specific. The two steps are separate so that each failure leaves the disk as it was:

* :func:`download_file` streams ``url`` into a temporary file beside the destination while hashing it, and
  moves it onto the destination only when the MD5 digest matches; on any error (network, HTTP status, short
  body, wrong digest) the temporary file is deleted and :class:`DownloadError` (or its subclass
  :class:`ChecksumError`) names the file, the URL and, for a digest mismatch, the expected and actual digests.
* :func:`extract_zip_atomic` unpacks a zip into a temporary folder in the destination's parent and renames
  the one folder it wants onto its final name: a reader sees either no folder or a complete one, never a
  half-extracted tree, and an interrupted extraction leaves only a hidden temporary folder that is removed.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

__all__ = ["DownloadError", "ChecksumError", "check_url_base", "download_file", "extract_zip_atomic"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
_SCHEMES = ("http", "https", "file")


class DownloadError(RuntimeError):
    """A file could not be fetched or unpacked; the message names the file and the URL."""


class ChecksumError(DownloadError):
    """A fetched file's MD5 digest is not the expected one (a truncated or corrupted download)."""


def check_url_base(url_base: str) -> str:
    """``url_base`` without a trailing slash, after checking that it is an absolute http(s) or file URL.

    Raises:
        ValueError: another scheme or no host (one line naming the value).
    """
    parsed = urllib.parse.urlparse(url_base)
    if parsed.scheme not in _SCHEMES or (parsed.scheme != "file" and not parsed.netloc):
        raise ValueError(f"--url-base must be an absolute http://, https:// or file:// URL, got {url_base!r}")
    return url_base.rstrip("/")


def _md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_file(url: str, dest: Path, md5: str, *, progress: bool = True, timeout: float = 60.0) -> None:
    """Stream ``url`` to ``dest``, verifying its MD5 digest; ``dest`` appears only when the digest matches.

    Args:
        url: where to fetch from (http, https or file).
        dest: the final file; its folder must exist. Written through a temporary file in the same folder,
            then renamed (``os.replace``).
        md5: the expected hexadecimal MD5 digest of the whole file.
        progress: show a tqdm bar (bytes; the total from ``Content-Length`` when the server sends it).
        timeout: seconds a connection or a read may block.

    Raises:
        DownloadError: the URL cannot be opened (HTTP status, no connection) or the body ends early.
        ChecksumError: the body arrived but its digest differs from ``md5`` (message: both digests and the
            number of bytes received).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.md5()
    received = 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    length = resp.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with tqdm(total=total, desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024,
                              disable=not progress, leave=False) as bar:
                        while True:
                            chunk = resp.read(_CHUNK)
                            if not chunk:
                                break
                            out.write(chunk)
                            h.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
                    if total is not None and received < total:
                        raise DownloadError(f"download of {dest.name} from {url} ended early: received {received} "
                                            f"of {total} bytes; nothing was kept, run the command again")
            except urllib.error.HTTPError as err:
                raise DownloadError(f"cannot download {dest.name} from {url}: HTTP {err.code} {err.reason}; "
                                    "check --url-base or try again later") from None
            except urllib.error.URLError as err:
                raise DownloadError(f"cannot download {dest.name} from {url}: {err.reason}; check the network "
                                    "connection or --url-base") from None
            except (http.client.HTTPException, OSError) as err:
                raise DownloadError(f"download of {dest.name} from {url} failed after {received} bytes: "
                                    f"{type(err).__name__}: {err}; nothing was kept, run the command again") from None
            out.flush()
            os.fsync(out.fileno())
        actual = h.hexdigest()
        if actual != md5.lower():
            raise ChecksumError(f"checksum mismatch for {dest.name} from {url}: expected md5 {md5.lower()}, got "
                                f"{actual} ({received} bytes received); the file is truncated or corrupted and was "
                                "deleted: run the command again, or use another --url-base")
        os.replace(tmp, dest)
        log.info("downloaded %s (%d bytes, md5 %s)", dest, received, actual)
    finally:
        tmp.unlink(missing_ok=True)


def _safe_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    members = []
    for info in zf.infolist():
        p = PurePosixPath(info.filename)
        if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
            raise DownloadError(f"refusing to extract {archive.name}: member {info.filename!r} points outside "
                                "the destination")
        if p.parts and p.parts[0] == "__MACOSX":
            continue
        members.append(info)
    return members


def extract_zip_atomic(archive: Path, dest: Path, *, inner: str | None = None) -> None:
    """Unpack ``archive`` so that ``dest`` appears complete or not at all.

    The zip is extracted into a hidden temporary folder in ``dest.parent``; the folder it wants (``inner``
    inside the archive when the archive has that top-level folder, else the whole extraction) is then renamed
    onto ``dest``. If ``dest`` appeared meanwhile (another process finished first) the extraction is dropped.

    Args:
        archive: the zip file.
        dest: the folder to create; must not exist yet.
        inner: the archive's top-level folder holding the payload (e.g. ``"images_background"``).

    Raises:
        DownloadError: not a readable zip, a member with an unsafe path, or a CRC error (message names it).
    """
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                members = _safe_members(zf, archive)
                zf.extractall(tmp, members=members)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
            raise DownloadError(f"cannot extract {archive.name}: {type(err).__name__}: {err}") from None
        payload = tmp / inner if inner is not None and (tmp / inner).is_dir() else tmp
        if payload == tmp:
            os.chmod(tmp, 0o755)  # mkdtemp creates 0700; the data is as readable as any unpacked folder
        try:
            os.rename(payload, dest)
        except OSError:
            if not dest.is_dir():
                raise
            log.info("%s appeared while extracting %s; keeping the existing folder", dest, archive.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
