"""MiniImagenet (Vinyals et al., 2016) with the class split of Ravi and Larochelle (2017): 64 / 16 / 20 classes
of 600 images each for meta-train / validation / meta-test, images 84x84 RGB.

Two common on-disk forms are read (the data cannot be downloaded by this package):

(a) Ravi-Larochelle split CSVs beside an image folder::

        <root>/train.csv  val.csv  test.csv       header "filename,label", e.g. "n0153282900000005.jpg,n01532829"
        <root>/images/<filename>                  JPEGs (also accepted: images/<label>/<filename>)

    Images are converted to RGB and resized to ``image_size`` (84) with LANCZOS (as Ravi and Larochelle's
    ``proc_images.py``); the decoded split is cached as ``uint8`` in the user cache directory
    (:mod:`rkmeta_rl.supervised.image_cache`; 0.8 GB for the training split), never beside the data.

(b) pickle caches::

        <root>/mini-imagenet-cache-train.pkl  mini-imagenet-cache-val.pkl (or -validation.pkl)  -test.pkl

    each a dict ``{"image_data": uint8 [N, 84, 84, 3], "class_dict": {class_name: [indices]}}``. They are read
    with a restricted unpickler that only rebuilds numpy arrays and plain containers (a pickle can otherwise run
    arbitrary code).

When both forms are present the pickles are used. Images come out of :class:`ClassSplit` as float32
``[C, H, W]`` in [0, 1] (value / 255); NO per-channel mean/std normalisation is applied, as in MAML's data
pipeline (Finn et al., 2017): the batch norm of the conv4's first block normalises each task's batch anyway.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import logging
import os
import pickle
import time
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from .class_split import ClassSplit
from .image_cache import (
    cache_file,
    decode_image,
    file_fingerprint,
    images_check,
    load_or_build,
    map_with_progress,
    resolve_cache_dir,
)

__all__ = ["SPLITS", "Format", "MiniImagenetSplits", "detect_format", "load_miniimagenet_split",
           "load_miniimagenet", "decode_miniimagenet_image"]

log = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "val", "test")
Format = Literal["csv", "pickle"]
_ALIASES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
_PICKLE_NAMES = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
_FORMAT_VERSION = 1
_LAYOUT = ("expected either the Ravi-Larochelle CSV form (<root>/train.csv, val.csv, test.csv with header "
           "'filename,label' and the JPEGs in <root>/images/) or the pickle form "
           "(<root>/mini-imagenet-cache-{train,val,test}.pkl; the val file may be named "
           "mini-imagenet-cache-validation.pkl)")


def _canonical(split: str) -> str:
    try:
        return _ALIASES[split]
    except KeyError:
        raise ValueError(f"unknown MiniImagenet split {split!r}; use one of {SPLITS}") from None


def _pickle_path(root: Path, split: str) -> Path | None:
    for name in _PICKLE_NAMES[split]:
        p = root / f"mini-imagenet-cache-{name}.pkl"
        if p.is_file():
            return p
    return None


def detect_format(root: str | os.PathLike[str], split: str = "train") -> Format:
    """Which on-disk form ``root`` holds for ``split`` (the pickles win when both are there).

    Raises:
        FileNotFoundError: ``root`` missing, or neither form present (the message names the path and both
            layouts), or a CSV without the ``images/`` folder.
    """
    path = Path(root).expanduser()
    split = _canonical(split)
    if not path.is_dir():
        raise FileNotFoundError(f"MiniImagenet root {path} does not exist or is not a folder; {_LAYOUT}")
    if _pickle_path(path, split) is not None:
        return "pickle"
    csv_path = path / f"{split}.csv"
    if csv_path.is_file():
        if not (path / "images").is_dir():
            raise FileNotFoundError(f"MiniImagenet split file {csv_path} found but the image folder "
                                    f"{path / 'images'} is missing; {_LAYOUT}")
        return "csv"
    names = " or ".join(f"mini-imagenet-cache-{n}.pkl" for n in _PICKLE_NAMES[split])
    raise FileNotFoundError(f"no MiniImagenet '{split}' split under {path}: neither {csv_path} nor {names}; "
                            f"{_LAYOUT}")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes and builtin containers only."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "set"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: a MiniImagenet cache holds only "
                                     "numpy arrays and dicts")


def _load_pickle_split(path: Path, split: str, image_size: int) -> ClassSplit:
    with open(path, "rb") as fh:
        try:
            obj = _ArrayUnpickler(fh, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
            raise ValueError(f"{path} is not a readable MiniImagenet pickle cache: {err}") from err
    if not isinstance(obj, dict) or "image_data" not in obj or "class_dict" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"wrong MiniImagenet pickle layout in {path}: expected a dict with 'image_data' "
                         f"(N x H x W x 3 uint8) and 'class_dict' ({{class: [indices]}}), got {keys}")
    data = np.asarray(obj["image_data"])
    if data.ndim != 4 or data.shape[3] != 3:
        raise ValueError(f"wrong MiniImagenet pickle layout in {path}: image_data must be N x H x W x 3, "
                         f"got shape {data.shape}")
    if data.shape[1:3] != (image_size, image_size):
        raise ValueError(f"{path} holds {data.shape[1]}x{data.shape[2]} images but image_size={image_size} was "
                         "asked; pickle caches are used at their stored size")
    if data.dtype != np.uint8:
        if data.min() < 0 or data.max() > 255:
            raise ValueError(f"{path}: image_data of dtype {data.dtype} outside [0, 255]")
        data = data.astype(np.uint8)
    class_dict = obj["class_dict"]
    if not isinstance(class_dict, dict) or not class_dict:
        raise ValueError(f"wrong MiniImagenet pickle layout in {path}: class_dict must be a non-empty dict")
    names = sorted(class_dict)
    members = []
    for name in names:
        idx = np.asarray(class_dict[name], dtype=np.int64).reshape(-1)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= len(data):
            raise ValueError(f"{path}: class {name!r} lists indices outside [0, {len(data)}) or none")
        members.append(torch.from_numpy(idx))
    log.info("MiniImagenet %s: %d images, %d classes from %s", split, len(data), len(names), path)
    return ClassSplit(torch.from_numpy(np.ascontiguousarray(data)), tuple(members), tuple(map(str, names)))


def decode_miniimagenet_image(path: str | os.PathLike[str], image_size: int = 84) -> np.ndarray:
    """One JPEG as ``uint8 [image_size, image_size, 3]`` RGB (LANCZOS resize when the size differs).

    Raises:
        ImageDecodeError: the file cannot be decoded (truncated, not an image); the message names it.
    """
    return decode_image(path, "RGB", image_size, "MiniImagenet")


def _read_csv(csv_path: Path) -> tuple[list[str], list[str]]:
    with open(csv_path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise ValueError(f"wrong MiniImagenet CSV layout in {csv_path}: the first line must be the header "
                         f"'filename,label', got {rows[0] if rows else 'an empty file'}")
    body = [r for r in rows[1:] if r]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != 2]
    if bad:
        raise ValueError(f"wrong MiniImagenet CSV layout in {csv_path}: line(s) {bad[:5]} do not have two fields")
    if not body:
        raise ValueError(f"MiniImagenet CSV {csv_path} lists no images")
    return [r[0].strip() for r in body], [r[1].strip() for r in body]


def _load_csv_split(root: Path, split: str, image_size: int, cache_dir: str | os.PathLike[str] | None,
                    progress: bool, workers: int) -> ClassSplit:
    csv_path = root / f"{split}.csv"
    files, labels = _read_csv(csv_path)
    img_dir = root / "images"
    paths: list[Path] = []
    for f, lab in zip(files, labels):
        p = img_dir / f
        if not p.is_file():
            alt = img_dir / lab / f
            if not alt.is_file():
                raise FileNotFoundError(f"{csv_path} lists {f!r} but neither {p} nor {alt} exists; {_LAYOUT}")
            p = alt
        paths.append(p)
    names = sorted(set(labels))
    label_ids = np.searchsorted(np.array(names), np.array(labels)).astype(np.int64)
    cdir = resolve_cache_dir(cache_dir, root)
    key = {"dataset": "miniimagenet", "root": str(root.resolve()), "split": split, "image_size": image_size,
           "version": _FORMAT_VERSION, "csv": hashlib.sha256(csv_path.read_bytes()).hexdigest(),
           "content": file_fingerprint(root, paths)}
    path = cache_file(cdir, f"miniimagenet-{split}-{image_size}px", key)

    def build() -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        fn = functools.partial(decode_miniimagenet_image, image_size=image_size)
        imgs = map_with_progress(fn, paths, total=len(paths), workers=workers,
                                 desc=f"MiniImagenet {split}", progress=progress)
        log.info("decoded %d MiniImagenet %s images in %.1f s", len(paths), split, time.perf_counter() - t0)
        return {"images": np.stack(imgs)}

    shape = (len(paths), image_size, image_size, 3)

    images = load_or_build(path, build, images_check(shape))["images"]
    return ClassSplit.from_labels(torch.from_numpy(images), label_ids, names)


def load_miniimagenet_split(root: str | os.PathLike[str], split: str, image_size: int = 84, *,
                            cache_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                            workers: int = 1) -> ClassSplit:
    """One split as a :class:`ClassSplit` (``uint8 [N, S, S, 3]`` storage, one base class per synset).

    Args:
        root: folder holding either on-disk form (see the module docstring).
        split: ``"train"``, ``"val"`` (or ``"validation"``) or ``"test"``.
        image_size: side after resizing (CSV form); must equal the stored size for the pickle form.
        cache_dir: cache for decoded JPEGs (default ``$RKMETA_CACHE`` or ``~/.cache/rkmeta_rl``).
        progress: tqdm bar while decoding.
        workers: decoding processes (CSV form, cache miss).

    Raises:
        FileNotFoundError: missing folders or files (named, with the expected layout).
        ValueError: a wrong layout (CSV header, pickle contents, image shape).
    """
    split = _canonical(split)
    base = Path(root).expanduser()
    fmt = detect_format(base, split)
    if fmt == "pickle":
        p = _pickle_path(base, split)
        assert p is not None
        return _load_pickle_split(p, split, image_size)
    return _load_csv_split(base, split, image_size, cache_dir, progress, workers)


class MiniImagenetSplits(NamedTuple):
    """The three Ravi-Larochelle splits."""

    train: ClassSplit
    val: ClassSplit
    test: ClassSplit


def load_miniimagenet(root: str | os.PathLike[str], image_size: int = 84, *,
                      cache_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                      workers: int = 1) -> MiniImagenetSplits:
    """All three splits (see :func:`load_miniimagenet_split`)."""
    return MiniImagenetSplits(*(load_miniimagenet_split(root, s, image_size, cache_dir=cache_dir, progress=progress,
                                                        workers=workers) for s in SPLITS))
