"""The Omniglot downloader end to end against a real HTTP server on 127.0.0.1.

The server (a thread, random free port, stopped by the fixture and in any case after 60 s) serves zips the
test builds in Omniglot's archive layout from a few real characters (``$RKMETA_OMNIGLOT``; synthetic 1-bit
drawings when the real data is absent, so the downloader is tested everywhere), and the test supplies their
MD5 digests. Cases: success then a second call that downloads nothing; a truncated archive; a corrupted one
(right size, wrong bytes); a body cut short against its Content-Length; an HTTP 404; a zip whose members
escape the destination. None may leave a partial folder or file; the loader then reads the downloaded tree.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from conftest import HAVE_OMNIGLOT, OMNIGLOT_ROOT
from PIL import Image

from rkmeta_rl.data import (
    OMNIGLOT_ARCHIVES,
    ChecksumError,
    DownloadError,
    default_data_root,
    download_omniglot,
    omniglot_root,
)
from rkmeta_rl.supervised import omniglot as og

REPO = Path(__file__).resolve().parents[1]
SUBSETS = ("images_background", "images_evaluation")


def _build_zip(subset: str) -> bytes:
    """A zip laid out like the official archive (``<subset>/<Alphabet>/characterNN/*.png``), 2 alphabets x 2
    characters x 20 drawings: real ones when available, else synthetic 1-bit drawings."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if HAVE_OMNIGLOT:
            src = Path(OMNIGLOT_ROOT) / subset
            for alphabet in sorted(p for p in src.iterdir() if p.is_dir())[:2]:
                for char in sorted(p for p in alphabet.iterdir() if p.is_dir())[:2]:
                    for png in sorted(char.glob("*.png")):
                        zf.write(png, f"{subset}/{alphabet.name}/{char.name}/{png.name}")
        else:
            rng = np.random.default_rng(SUBSETS.index(subset))
            for a in range(2):
                for c in range(2):
                    for k in range(20):
                        img = io.BytesIO()
                        Image.fromarray(rng.random((105, 105)) > 0.1).convert("1").save(img, format="PNG")
                        zf.writestr(f"{subset}/{subset[7:]}{a}/character{c + 1:02d}/{a}{c}_{k:02d}.png",
                                    img.getvalue())
    return buf.getvalue()


class _Server:
    """A threaded HTTP server on 127.0.0.1 serving ``files`` (path -> bytes); ``cut`` paths announce a longer
    Content-Length than they send."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.slow = False  # send bodies in small chunks with pauses, so that concurrent downloads overlap
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body) + (1000 if self.path in outer.cut else 0)))
                self.end_headers()
                if outer.slow:
                    for i in range(0, len(body), 2048):
                        self.wfile.write(body[i:i + 2048])
                        self.wfile.flush()
                        time.sleep(0.005)
                else:
                    self.wfile.write(body)
                if self.path in outer.cut:
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.timeout = 5
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/omniglot"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.stopper = threading.Timer(60.0, self.stop)  # bounded: stops itself whatever the test does
        self.stopper.daemon = True

    def start(self) -> "_Server":
        self.thread.start()
        self.stopper.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.stopper.cancel()


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    return {f"{s}.zip": _build_zip(s) for s in SUBSETS}


@pytest.fixture
def server(archives: dict[str, bytes]) -> Iterator[_Server]:
    srv = _Server().start()
    srv.files = {f"/omniglot/{name}": body for name, body in archives.items()}
    yield srv
    srv.stop()
    srv.thread.join(timeout=10)
    assert not srv.thread.is_alive()


def _md5s(archives: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.md5(body).hexdigest() for name, body in archives.items()}


def _leftovers(root: Path) -> list[str]:
    """Everything under ``root`` except complete subset folders' contents."""
    rel = [p.relative_to(root).parts for p in root.rglob("*")]
    return sorted("/".join(parts) for parts in rel if not (len(parts) > 2 and parts[1] in SUBSETS))


def test_official_archives_are_torchvision_s() -> None:
    assert [(a.filename, a.md5) for a in OMNIGLOT_ARCHIVES] == [
        ("images_background.zip", "68d2efa1b9178cc56df9314c21c6e718"),
        ("images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811")]


def test_download_then_idempotent_then_load(server: _Server, archives: dict[str, bytes], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"python -m rkmeta_rl.data omniglot --root {tmp_path}"):
        omniglot_root(tmp_path)
    rep = download_omniglot(tmp_path, url_base=server.url + "/", progress=False, md5s=_md5s(archives))
    assert rep.root == tmp_path / "omniglot" and rep.downloaded == ("images_background.zip", "images_evaluation.zip")
    assert sorted(p.name for p in rep.root.iterdir()) == list(SUBSETS)  # no zip, no temporary left
    assert len(server.requests) == 2
    # second call: nothing downloaded
    again = download_omniglot(tmp_path, url_base=server.url, progress=False, md5s=_md5s(archives))
    assert again.downloaded == () and len(server.requests) == 2
    assert omniglot_root(tmp_path) == rep.root
    assert omniglot_root(rep.root) == rep.root  # a dataset folder is accepted as is
    # the loader reads the downloaded tree: every file of the archive, byte for byte, as the same images
    index = og.scan_omniglot(rep.root)
    assert index.num_characters() == 8 and index.num_images == 160
    for _name, body in archives.items():
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            for info in zf.infolist():
                assert (rep.root / info.filename).read_bytes() == zf.read(info)
    data = og.load_omniglot(rep.root, 28, cache_dir=tmp_path / "cache", progress=False)
    assert data.images.shape == (160, 28, 28)
    assert np.array_equal(data.images[0], og.preprocess_omniglot_image(index.characters[0].files[0]))


@pytest.mark.parametrize("fault", ["truncated", "corrupted", "cut_short", "missing"])
def test_bad_download_leaves_nothing(fault: str, server: _Server, archives: dict[str, bytes],
                                     tmp_path: Path) -> None:
    good = archives["images_evaluation.zip"]
    path = "/omniglot/images_evaluation.zip"
    if fault == "truncated":
        server.files[path] = good[: len(good) // 2]
    elif fault == "corrupted":  # same size, a few bytes flipped in the middle
        mid = len(good) // 2
        server.files[path] = good[:mid] + bytes(b ^ 0xFF for b in good[mid:mid + 16]) + good[mid + 16:]
        assert len(server.files[path]) == len(good)
    elif fault == "cut_short":
        server.cut.add(path)
    else:
        del server.files[path]
    md5 = _md5s(archives)
    expect = {"truncated": (ChecksumError, "checksum mismatch for images_evaluation.zip"),
              "corrupted": (ChecksumError, "checksum mismatch for images_evaluation.zip"),
              "cut_short": (DownloadError, "images_evaluation.zip .*ended early|images_evaluation.zip .*failed"),
              "missing": (DownloadError, "images_evaluation.zip .*HTTP 404")}[fault]
    with pytest.raises(expect[0], match=expect[1]) as err:
        download_omniglot(tmp_path, url_base=server.url, progress=False, md5s=md5)
    if expect[0] is ChecksumError:
        assert f"expected md5 {md5['images_evaluation.zip']}, got " in str(err.value)
        assert hashlib.md5(server.files[path]).hexdigest() in str(err.value)
    root = tmp_path / "omniglot"
    # the good archive is complete; of the bad one nothing at all remains (no folder, no zip, no temporary)
    assert _leftovers(tmp_path) == ["omniglot", "omniglot/images_background"]
    assert not (root / "images_evaluation").exists()
    with pytest.raises(FileNotFoundError, match="python -m rkmeta_rl.data omniglot"):
        omniglot_root(tmp_path)
    # repaired server: the next call fetches only the missing archive
    server.files[path] = good
    server.cut.clear()
    n = len(server.requests)
    rep = download_omniglot(tmp_path, url_base=server.url, progress=False, md5s=md5)
    assert rep.downloaded == ("images_evaluation.zip",) and len(server.requests) == n + 1
    assert og.scan_omniglot(root).num_characters() == 8


def test_unreachable_server_leaves_no_folders(tmp_path: Path) -> None:
    srv = _Server()  # bound, never started, then closed: its port refuses connections
    url = srv.url
    srv.httpd.server_close()
    srv.stopper.cancel()
    root = tmp_path / "new" / "deeper"
    with pytest.raises(DownloadError, match=f"cannot download images_background.zip from {url}/images_background.zip"):
        download_omniglot(root, url_base=url, progress=False, timeout=5)
    assert list(tmp_path.iterdir()) == []  # the folders this call created are removed again


def test_unsafe_archive_is_refused(server: _Server, archives: dict[str, bytes], tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("images_background/../../escaped.txt", b"x")
    server.files["/omniglot/images_background.zip"] = buf.getvalue()
    md5 = _md5s({**archives, "images_background.zip": buf.getvalue()})
    with pytest.raises(DownloadError, match="refusing to extract images_background.zip"):
        download_omniglot(tmp_path, url_base=server.url, progress=False, md5s=md5)
    assert _leftovers(tmp_path) == [] and not list(tmp_path.parent.glob("escaped.txt"))


def test_concurrent_downloads(server: _Server, archives: dict[str, bytes], tmp_path: Path) -> None:
    """Several callers at once (every rank of a torchrun job) all end with the complete tree and no leftovers."""
    errors: list[BaseException] = []
    server.slow = True

    def get() -> None:
        try:
            download_omniglot(tmp_path, url_base=server.url, progress=False, md5s=_md5s(archives))
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=get) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert _leftovers(tmp_path) == ["omniglot", "omniglot/images_background", "omniglot/images_evaluation"]
    assert og.scan_omniglot(tmp_path / "omniglot").num_images == 160


def test_root_forms(tmp_path: Path) -> None:
    """A data root, a dataset folder, torchvision's ``omniglot-py`` and the folder holding it are all accepted."""
    for sub in SUBSETS:
        (tmp_path / "tv" / "omniglot-py" / sub).mkdir(parents=True)
        (tmp_path / "data" / "omniglot" / sub).mkdir(parents=True)
    assert omniglot_root(tmp_path / "tv") == tmp_path / "tv" / "omniglot-py"
    assert omniglot_root(tmp_path / "tv" / "omniglot-py") == tmp_path / "tv" / "omniglot-py"
    assert omniglot_root(tmp_path / "data") == tmp_path / "data" / "omniglot"
    assert omniglot_root(str(tmp_path / "data" / "omniglot")) == tmp_path / "data" / "omniglot"
    # the downloader recognises all of them too: nothing to download
    for root in (tmp_path / "tv", tmp_path / "data", tmp_path / "data" / "omniglot"):
        rep = download_omniglot(root, url_base="http://127.0.0.1:9/unused", progress=False)
        assert rep.downloaded == () and rep.root == omniglot_root(root)
    (tmp_path / "half" / "omniglot" / SUBSETS[0]).mkdir(parents=True)  # one subset only: not complete
    with pytest.raises(FileNotFoundError, match="Omniglot not found"):
        omniglot_root(tmp_path / "half")


def test_default_root_and_url_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RKMETA_DATA", str(tmp_path / "d"))
    assert default_data_root() == tmp_path / "d"
    monkeypatch.delenv("RKMETA_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_root() == tmp_path / "xdg" / "rkmeta_rl" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_root() == Path.home() / ".cache" / "rkmeta_rl" / "data"
    monkeypatch.setenv("RKMETA_DATA", str(tmp_path / "d"))
    with pytest.raises(FileNotFoundError, match=r"get it with: python -m rkmeta_rl.data omniglot$"):
        omniglot_root()
    with pytest.raises(ValueError, match="--url-base must be an absolute .* got 'ftp://x'"):
        download_omniglot(tmp_path, url_base="ftp://x")
    assert not (tmp_path / "omniglot").exists()


def test_command_line(server: _Server, archives: dict[str, bytes], tmp_path: Path) -> None:
    """``scripts/get_data.py`` and ``python -m rkmeta_rl.data``: a failure is one line and exit 1, a success says
    what it downloaded, a repeat says nothing was."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "scripts" / "get_data.py"), "omniglot", "--root", str(tmp_path),
           "--url-base", server.url, "--no-progress"]
    bad = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    # the test archives are not the official ones: the official checksum refuses them
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "checksum mismatch for images_background.zip" in bad.stderr
    assert "68d2efa1b9178cc56df9314c21c6e718" in bad.stderr
    assert _leftovers(tmp_path) == []
    # with the archives in place, the command only reports
    download_omniglot(tmp_path, url_base=server.url, progress=False, md5s=_md5s(archives))
    n = len(server.requests)
    ok = subprocess.run([sys.executable, "-m", "rkmeta_rl.data", "omniglot", "--root", str(tmp_path), "--url-base",
                         server.url], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and "already present" in ok.stdout and "nothing downloaded" in ok.stdout
    assert len(server.requests) == n
