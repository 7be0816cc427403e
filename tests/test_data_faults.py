"""Data faults: stale or damaged image caches are rebuilt, decoding errors name the file, a bad cache folder fails
before any image is decoded. Synthetic Omniglot-layout trees and MiniImagenet CSV folders in tmp_path."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script
from PIL import Image

from rkmeta_rl.supervised import image_cache as ic
from rkmeta_rl.supervised import miniimagenet as mi
from rkmeta_rl.supervised import omniglot as og


def _tree(base: Path, chars: int = 2, drawings: int = 3) -> None:
    """Omniglot layout (``scripts/fault_sweep.py``'s builder); every drawing distinct (random ink), so a swap of
    two files changes the images, and all files of one size (uncompressed PNG), so a swap changes neither names
    nor sizes."""
    load_script("fault_sweep").omniglot_tree(base, chars, drawings)


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("decoded an image: the cache was not used")

    monkeypatch.setattr(og, "preprocess_omniglot_image", boom)


def _swap(a: Path, b: Path, how: str) -> None:
    if how == "rewrite":  # contents exchanged in place (same names, same total size)
        da, db = a.read_bytes(), b.read_bytes()
        a.write_bytes(db)
        b.write_bytes(da)
    else:  # exchanged by renames: each file keeps its own modification time
        tmp = a.with_suffix(".swap")
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)


@pytest.mark.parametrize("how", ["rewrite", "rename"])
def test_swapped_files_rebuild_the_cache(tmp_path: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path / "d")
    cache = tmp_path / "c"
    first = og.load_omniglot(tmp_path / "d", 14, cache_dir=cache, progress=False)
    files = first.index.files()
    i, j = 0, len(files) - 1  # drawings of different characters
    assert not np.array_equal(first.images[i], first.images[j])
    assert files[i].stat().st_size == files[j].stat().st_size
    _swap(files[i], files[j], how)
    again = og.load_omniglot(tmp_path / "d", 14, cache_dir=cache, progress=False)
    assert np.array_equal(again.images[i], first.images[j]) and np.array_equal(again.images[j], first.images[i])
    assert len(list(cache.glob("*.npz"))) == 2  # a new key, the stale file is never served
    _no_decoding(monkeypatch)
    assert np.array_equal(og.load_omniglot(tmp_path / "d", 14, cache_dir=cache, progress=False).images, again.images)


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "empty", "wrong_shape"])
def test_damaged_cache_is_rebuilt(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    _tree(tmp_path / "d")
    cache = tmp_path / "c"
    good = og.load_omniglot(tmp_path / "d", 14, cache_dir=cache, progress=False).images
    (path,) = cache.glob("*.npz")
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "corrupted":  # same size; bytes flipped inside the image array
        mid = len(raw) // 2
        path.write_bytes(raw[:mid] + bytes(b ^ 0x5A for b in raw[mid:mid + 64]) + raw[mid + 64:])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        np.savez(path, images=np.zeros((3, 14, 14), np.uint8))
    with caplog.at_level(logging.WARNING, logger=ic.__name__):
        again = og.load_omniglot(tmp_path / "d", 14, cache_dir=cache, progress=False).images
    assert np.array_equal(again, good)
    assert str(path) in caplog.text and "rebuilding" in caplog.text
    with np.load(path) as z:  # and the rebuilt file is whole again
        assert np.array_equal(z["images"], good)


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_png_names_the_file(tmp_path: Path, workers: int) -> None:
    _tree(tmp_path / "d")
    bad = tmp_path / "d" / og.EVALUATION / "Alpha" / "character02" / "1_01.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(ic.ImageDecodeError, match=f"cannot decode Omniglot image {bad}"):
        og.load_omniglot(tmp_path / "d", 14, cache_dir=tmp_path / "c", progress=False, workers=workers)
    assert not list((tmp_path / "c").glob("*.npz"))
    bad.write_bytes(b"not a png")
    with pytest.raises(ic.ImageDecodeError, match=f"{bad}: UnidentifiedImageError"):
        og.preprocess_omniglot_image(bad)


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    lines = ["filename,label"]
    for c in range(2):
        for i in range(2):
            name = f"n0{c}{i:07d}.jpg"
            Image.new("RGB", (90, 90), (100 * c, 50, 20 * i)).save(root / "images" / name)
            lines.append(f"{name},n0{c}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    bad = root / "images" / "n010000001.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ic.ImageDecodeError, match=f"cannot decode MiniImagenet image {bad}"):
        mi.load_miniimagenet_split(root, "train", cache_dir=tmp_path / "c", progress=False)


def test_cache_dir_under_a_file_fails_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tree(tmp_path / "d")
    afile = tmp_path / "afile"
    afile.write_text("x")
    _no_decoding(monkeypatch)
    with pytest.raises(ValueError, match=f"cache directory {afile / 'sub'} cannot be created: {afile} is a file"):
        og.load_omniglot(tmp_path / "d", 14, cache_dir=afile / "sub", progress=False)
    with pytest.raises(ValueError, match=f"cache directory {afile} is a file, not a folder"):
        og.load_omniglot(tmp_path / "d", 14, cache_dir=afile, progress=False)


def test_check_writable_dir(tmp_path: Path) -> None:
    afile = tmp_path / "f"
    afile.write_text("x")
    assert ic.check_writable_dir(tmp_path / "new" / "deeper", "--cache-dir") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing created
    with pytest.raises(ValueError, match=f"^--cache-dir {afile / 'x' / 'y'} cannot be created: {afile} is a file"):
        ic.check_writable_dir(afile / "x" / "y", "--cache-dir")
    with pytest.raises(ValueError, match=f"^--logdir {afile} is a file, not a folder$"):
        ic.check_writable_dir(afile, "--logdir")
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ValueError, match=f"--cache-dir {ro / 'c'} is not writable"):
                ic.check_writable_dir(ro / "c", "--cache-dir")
        finally:
            ro.chmod(0o700)
