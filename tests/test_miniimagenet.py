"""MiniImagenet in both on-disk forms, built tiny in tmp_path (the real data cannot be fetched here)."""

from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rkmeta_rl.supervised import miniimagenet as mi
from rkmeta_rl.supervised.episodes import EpisodeSampler

SYNSETS = {"train": ["n01532829", "n01558993", "n01704323", "n01749939", "n01770081"],
           "val": ["n01855672", "n02091244"], "test": ["n01930112", "n01981276", "n02099601"]}
PER_CLASS = 4


def _make_csv_form(root: Path, nested: bool = False) -> None:
    """Ravi-Larochelle layout: split CSVs and JPEGs of various sizes (one colour per class)."""
    (root / "images").mkdir(parents=True)
    for split, synsets in SYNSETS.items():
        with open(root / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["filename", "label"])
            for c, syn in enumerate(synsets):
                for i in range(PER_CLASS):
                    name = f"{syn}{i + 1:08d}.jpg"
                    folder = root / "images" / syn if nested else root / "images"
                    folder.mkdir(exist_ok=True)
                    colour = (40 * c, 200 - 40 * c, 60 * i)
                    Image.new("RGB", (100 + 10 * i, 90), colour).save(folder / name, quality=95)
                    w.writerow([name, syn])


def _make_pickle_form(root: Path, val_name: str = "validation") -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for split, synsets in SYNSETS.items():
        data = rng.integers(0, 256, size=(len(synsets) * PER_CLASS, 84, 84, 3), dtype=np.uint8)
        order = rng.permutation(len(data))
        class_dict = {s: sorted(order[c * PER_CLASS:(c + 1) * PER_CLASS].tolist()) for c, s in enumerate(synsets)}
        name = val_name if split == "val" else split
        with open(root / f"mini-imagenet-cache-{name}.pkl", "wb") as fh:
            pickle.dump({"image_data": data, "class_dict": class_dict}, fh)
        out[split] = data
    return out


@pytest.mark.parametrize("nested", [False, True])
def test_csv_form_decodes_resizes_and_caches(tmp_path: Path, nested: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = tmp_path / "mini", tmp_path / "cache"
    _make_csv_form(root, nested)
    assert mi.detect_format(root) == "csv"
    sp = mi.load_miniimagenet(root, cache_dir=cache, progress=False)
    assert [s.num_classes for s in sp] == [5, 2, 3]
    assert sp.train.class_names == tuple(sorted(SYNSETS["train"]))
    assert sp.train.images.shape == (20, 84, 84, 3) and sp.train.image_shape == (3, 84, 84)
    x = sp.train.fetch(0, [0, 1, 2, 3])
    assert x.shape == (4, 3, 84, 84) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert abs(float(x[0, 0].mean()) - 0.0) < 0.02 and abs(float(x[0, 1].mean()) - 200 / 255) < 0.02  # class 0 colour
    assert len(list(cache.glob("miniimagenet-*.npz"))) == 3 and not list(cache.glob("*.tmp"))
    assert not [p for p in root.rglob("*") if p.suffix in (".npz", ".npy", ".tmp")]

    def boom(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("cache miss")

    monkeypatch.setattr(mi, "decode_miniimagenet_image", boom)
    again = mi.load_miniimagenet_split(root, "validation", cache_dir=cache, progress=False)
    assert torch.equal(again.images, sp.val.images)
    with pytest.raises(ValueError, match="inside the data folder"):
        mi.load_miniimagenet_split(root, "test", cache_dir=root / "cache", progress=False)


def test_pickle_form_with_validation_name(tmp_path: Path) -> None:
    raw = _make_pickle_form(tmp_path / "p", val_name="validation")
    assert mi.detect_format(tmp_path / "p", "val") == "pickle"
    sp = mi.load_miniimagenet(tmp_path / "p", progress=False)
    assert [s.num_classes for s in sp] == [5, 2, 3] and sp.val.class_names == tuple(sorted(SYNSETS["val"]))
    with open(tmp_path / "p" / "mini-imagenet-cache-train.pkl", "rb") as fh:
        class_dict = pickle.load(fh)["class_dict"]
    c = sp.train.class_names.index("n01704323")
    x = sp.train.fetch(c, np.arange(PER_CLASS))
    expect = torch.from_numpy(raw["train"][class_dict["n01704323"]]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(x, expect)
    b = EpisodeSampler(sp.train, ways=5, shots=1, queries=3, seed=0).sample(2)
    assert b["xs"].shape == (2, 5, 3, 84, 84) and b["xq"].shape == (2, 15, 3, 84, 84)
    _make_pickle_form(tmp_path / "q", val_name="val")
    assert mi.load_miniimagenet_split(tmp_path / "q", "val", progress=False).num_classes == 2


def test_missing_and_wrong_layouts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mi.load_miniimagenet_split(tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError, match=r"neither .*train\.csv nor mini-imagenet-cache-train\.pkl.*images/"):
        mi.load_miniimagenet_split(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown MiniImagenet split"):
        mi.load_miniimagenet_split(tmp_path, "dev")
    (tmp_path / "train.csv").write_text("filename,label\na.jpg,n1\n")
    with pytest.raises(FileNotFoundError, match="image folder .*images is missing"):
        mi.load_miniimagenet_split(tmp_path, "train")
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="lists 'a.jpg' but neither"):
        mi.load_miniimagenet_split(tmp_path, "train", cache_dir=tmp_path.parent / "c", progress=False)
    (tmp_path / "train.csv").write_text("file,class\na.jpg,n1\n")
    with pytest.raises(ValueError, match="header 'filename,label'"):
        mi.load_miniimagenet_split(tmp_path, "train")


def test_bad_pickles_are_refused(tmp_path: Path) -> None:
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as fh:
        pickle.dump({"images": np.zeros((2, 84, 84, 3), np.uint8)}, fh)
    with pytest.raises(ValueError, match="'image_data'.*'class_dict'.*got \\['images'\\]"):
        mi.load_miniimagenet_split(tmp_path, "train")
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as fh:
        pickle.dump({"image_data": np.zeros((2, 84, 84), np.uint8), "class_dict": {"a": [0, 1]}}, fh)
    with pytest.raises(ValueError, match="N x H x W x 3"):
        mi.load_miniimagenet_split(tmp_path, "train")
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as fh:
        pickle.dump({"image_data": np.zeros((2, 84, 84, 3), np.uint8), "class_dict": {"a": [0, 5]}}, fh)
    with pytest.raises(ValueError, match="class 'a' lists indices outside"):
        mi.load_miniimagenet_split(tmp_path, "train")

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.getcwd, ())

    with open(tmp_path / "mini-imagenet-cache-train.pkl", "wb") as fh:
        pickle.dump({"image_data": Evil(), "class_dict": {}}, fh)
    with pytest.raises(ValueError, match="refusing to unpickle posix.getcwd|refusing to unpickle nt.getcwd"):
        mi.load_miniimagenet_split(tmp_path, "train")


def test_sampler_errors_on_small_sets(tmp_path: Path) -> None:
    _make_pickle_form(tmp_path)
    val = mi.load_miniimagenet_split(tmp_path, "val")
    with pytest.raises(ValueError, match="5-way tasks need at least 5 classes; the split has 2"):
        EpisodeSampler(val, ways=5, shots=1)
    with pytest.raises(ValueError, match="fewer than shots \\+ queries = 1 \\+ 15 = 16 images"):
        EpisodeSampler(val, ways=2, shots=1, queries=15)
