"""Omniglot loading: real counts, preprocessing (LANCZOS on greyscale), MAML split, cache, layout errors.

The real dataset (``$RKMETA_OMNIGLOT``; those tests skip without it) is preprocessed once per test session into a
session temporary cache (measured: about 15 s for the 32,460 PNGs on a 2-core CPU, 25 MB cache); set
$RKMETA_CACHE to reuse a persistent cache across sessions.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import OMNIGLOT_ROOT, needs_omniglot
from PIL import Image

from rkmeta_rl.supervised import omniglot as og

needs_data = needs_omniglot


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("RKMETA_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("rkmeta_cache")


@pytest.fixture(scope="session")
def omniglot_data(cache_dir: Path) -> og.OmniglotData:
    return og.load_omniglot(OMNIGLOT_ROOT, 28, cache_dir=cache_dir, progress=False)


# ------------------------------------------------------------------ real data


@needs_data
def test_counts_from_file_tree() -> None:
    index = og.scan_omniglot(OMNIGLOT_ROOT)
    assert index.num_characters(og.BACKGROUND) == og.NUM_BACKGROUND_CHARACTERS == 964
    assert index.num_characters(og.EVALUATION) == og.NUM_EVALUATION_CHARACTERS == 659
    assert index.num_characters() == og.NUM_CHARACTERS == 1623
    assert index.num_alphabets(og.BACKGROUND) == 30 and index.num_alphabets(og.EVALUATION) == 20
    assert index.drawings_per_character() == {og.DRAWINGS_PER_CHARACTER: 1623}
    assert index.num_images == 32460
    assert index.characters[0].name.startswith("images_background/")


@needs_data
def test_load_split_and_rotation_classes(omniglot_data: og.OmniglotData) -> None:
    assert omniglot_data.images.shape == (32460, 28, 28) and omniglot_data.images.dtype == np.uint8
    sp = og.omniglot_splits(omniglot_data)
    assert sp.val is None
    assert sp.train.num_base_classes == 1200 and sp.train.num_classes == 4800
    assert sp.test.num_base_classes == 423 and sp.test.num_classes == 423
    train, test = set(sp.train.class_names), set(sp.test.class_names)
    assert not train & test and len(train | test) == 1623
    # the permutation mixes background and evaluation characters (MAML protocol)
    assert any(n.startswith(og.EVALUATION) for n in train) and any(n.startswith(og.BACKGROUND) for n in test)
    # the canonical split is fixed: the original code's random.seed(1) shuffle of the sorted character names
    names = sorted(f"{c.alphabet}/{c.character}" for c in omniglot_data.index.characters)
    random.Random(1).shuffle(names)
    assert {n.split("/", 1)[1] for n in sp.train.class_names} == set(names[:1200])
    assert og.omniglot_splits(omniglot_data, split_seed=1).train.class_names == sp.train.class_names
    assert og.omniglot_splits(omniglot_data, split_seed=2).train.class_names != sp.train.class_names
    sv = og.omniglot_splits(omniglot_data, num_val=100)
    assert sv.val is not None and sv.val.num_classes == 100 and sv.train.num_classes == 4400
    assert set(sv.train.class_names) | set(sv.val.class_names) == train  # carved from the training characters
    assert sv.test.class_names == sp.test.class_names
    # rotation classes: 4 b + r is base class b turned r quarter turns
    x0, x1 = sp.train.fetch(0, [0, 1]), sp.train.fetch(1, [0, 1])
    assert x0.shape == (2, 1, 28, 28) and x0.dtype == torch.float32
    assert torch.equal(x1, torch.rot90(x0, 1, dims=(2, 3)))
    assert sp.train.class_name(1).endswith("@rot90") and sp.train.class_sizes().tolist() == [20] * 1200


@needs_data
def test_preprocessing_is_lanczos_on_greyscale(omniglot_data: og.OmniglotData) -> None:
    imgs = omniglot_data.images
    # ink is 1 (255 stored), background 0, and the LANCZOS resize leaves intermediate grey values
    values = np.unique(imgs[:200])
    assert values.min() == 0 and values.max() >= 250
    grey = ((imgs[:200] > 10) & (imgs[:200] < 245)).mean()
    assert grey > 0.02, f"only {grey:.3%} intermediate pixels: was the 1-bit image resized directly?"
    assert (imgs[:200] == 0).mean() > 0.5  # mostly background
    # one image against an independent computation, and against the nearest-neighbour trap of mode '1'
    path = omniglot_data.index.characters[0].files[0]
    with Image.open(path) as im:
        assert im.mode == "1"
        expect = 255 - np.asarray(im.convert("L").resize((28, 28), Image.Resampling.LANCZOS))
        trap = 255 - np.asarray(im.resize((28, 28), Image.Resampling.LANCZOS).convert("L"))
    assert np.array_equal(imgs[0], expect)
    assert set(np.unique(trap).tolist()) <= {0, 255} and not np.array_equal(expect, trap)
    x = og.omniglot_splits(omniglot_data).test.fetch(0, np.arange(20))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


@needs_data
def test_cache_lives_outside_the_data(omniglot_data: og.OmniglotData, cache_dir: Path) -> None:
    files = list(cache_dir.glob("omniglot-28px-*.npz"))
    assert len(files) == 1 and not list(cache_dir.glob("*.tmp"))
    root = Path(OMNIGLOT_ROOT).resolve()
    assert root not in files[0].resolve().parents
    assert not [p for p in root.iterdir() if p.suffix in (".npz", ".npy", ".tmp")]
    with pytest.raises(ValueError, match="inside the data folder"):
        og.load_omniglot(OMNIGLOT_ROOT, cache_dir=root / og.BACKGROUND, progress=False)


# ------------------------------------------------------------------ synthetic trees


def _make_tree(base: Path, alphabets: int = 2, chars: int = 2, drawings: int = 3) -> None:
    rng = np.random.default_rng(0)
    for subset in og.SUBSETS:
        for a in range(alphabets):
            for c in range(chars):
                d = base / subset / f"Alpha{a}" / f"character{c + 1:02d}"
                d.mkdir(parents=True)
                for k in range(drawings):
                    bits = rng.random((105, 105)) > 0.1  # True = white paper, False = black ink
                    Image.fromarray(bits).convert("1").save(d / f"{a}{c}_{k:02d}.png")


def test_torchvision_layout_and_cache_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_tree(tmp_path / "data" / "omniglot-py")
    cache = tmp_path / "cache"
    for root in (tmp_path / "data", tmp_path / "data" / "omniglot-py"):
        assert og.resolve_omniglot_root(root) == tmp_path / "data" / "omniglot-py"
    data = og.load_omniglot(tmp_path / "data", 14, cache_dir=cache, progress=False)
    assert data.images.shape == (24, 14, 14) and data.index.num_characters() == 8
    assert data.offsets.tolist() == list(range(0, 25, 3))
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob("*.tmp"))
    assert not list((tmp_path / "data").rglob("*.np*"))

    def boom(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("cache miss")

    monkeypatch.setattr(og, "preprocess_omniglot_image", boom)
    again = og.load_omniglot(tmp_path / "data" / "omniglot-py", 14, cache_dir=cache, progress=False)
    assert np.array_equal(again.images, data.images)  # same root, size and content: served from the cache
    monkeypatch.setenv("RKMETA_CACHE", str(cache))
    assert np.array_equal(og.load_omniglot(tmp_path / "data", 14, progress=False).images, data.images)
    sp = og.omniglot_splits(data, num_train=5, num_val=1)
    assert (sp.train.num_classes, sp.val.num_classes, sp.test.num_classes) == (16, 1, 3)


def test_missing_and_wrong_layouts(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist.*get it with: python -m rkmeta_rl.data omniglot"):
        og.scan_omniglot(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="images_background.*characterNN"):
        og.scan_omniglot(tmp_path)
    (tmp_path / og.BACKGROUND / "Alpha" / "character01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=f"{og.EVALUATION} is missing"):
        og.scan_omniglot(tmp_path)
    (tmp_path / og.EVALUATION / "Beta" / "character01").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no .png"):
        og.scan_omniglot(tmp_path)
    Image.new("1", (105, 105), 1).save(tmp_path / og.BACKGROUND / "Alpha" / "character01" / "a.png")
    Image.new("1", (105, 105), 1).save(tmp_path / og.EVALUATION / "Beta" / "character01" / "b.png")
    assert og.scan_omniglot(tmp_path).num_images == 2
    Image.new("1", (105, 105), 1).save(tmp_path / og.EVALUATION / "Beta" / "stray.png")
    with pytest.raises(ValueError, match="expected only character folders"):
        og.scan_omniglot(tmp_path)


def test_split_arguments_are_checked_and_parallel_build(tmp_path: Path) -> None:
    _make_tree(tmp_path / "d", drawings=1)
    data = og.load_omniglot(tmp_path / "d", 8, cache_dir=tmp_path / "c", progress=False)
    par = og.load_omniglot(tmp_path / "d", 8, cache_dir=tmp_path / "c2", progress=False, workers=2)
    assert np.array_equal(par.images, data.images)
    with pytest.raises(ValueError, match="holds 8 characters .* needs more than 8 .*num_train=8"):
        og.omniglot_splits(data, num_train=8)
    with pytest.raises(ValueError, match="num_val"):
        og.omniglot_splits(data, num_train=4, num_val=4)
    with pytest.raises(ValueError, match="num_train must be an integer >= 1"):
        og.omniglot_splits(data, num_train=0)
    with pytest.raises(ValueError, match="split_seed must be an integer or None, got 1.5"):
        og.omniglot_splits(data, num_train=4, split_seed=1.5)  # type: ignore[arg-type]


def test_split_is_fixed_and_independent_of_listing_order(tmp_path: Path) -> None:
    _make_tree(tmp_path / "d", alphabets=3, chars=4, drawings=1)
    data = og.load_omniglot(tmp_path / "d", 8, cache_dir=tmp_path / "c", progress=False)
    a = og.omniglot_splits(data, num_train=16)
    assert og.omniglot_splits(data, num_train=16).test.class_names == a.test.class_names  # deterministic
    # the same characters listed in another order (another file system) give the same split
    rev = data.index.characters[::-1]
    order = og.character_order(og.OmniglotIndex(data.index.root, rev))
    assert [rev[i].name for i in order] == [data.index.characters[i].name for i in og.character_order(data.index)]
    # another split_seed draws another split over the same characters
    b = og.omniglot_splits(data, num_train=16, split_seed=7)
    assert set(b.test.class_names) != set(a.test.class_names)
    assert set(b.train.class_names) | set(b.test.class_names) == set(a.train.class_names) | set(a.test.class_names)


def test_too_small_tree_fails_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_tree(tmp_path / "d", drawings=1)

    def boom(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("decoded images before checking the split")

    monkeypatch.setattr(og, "preprocess_omniglot_image", boom)
    with pytest.raises(ValueError, match=r"holds 8 characters \(4 alphabets\), but the split needs more than 1200"
                                         r".* complete dataset has 1623.*python -m rkmeta_rl.data omniglot"):
        og.load_omniglot_splits(tmp_path / "d", cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="num_val must be in"):
        og.load_omniglot_splits(tmp_path / "d", num_train=4, num_val=5, cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="split_seed must be an integer or None, got '1'"):
        og.load_omniglot_splits(tmp_path / "d", num_train=4, split_seed="1",  # type: ignore[arg-type]
                                cache_dir=tmp_path / "c", progress=False)
    monkeypatch.undo()
    sp = og.load_omniglot_splits(tmp_path / "d", 8, num_train=6, cache_dir=tmp_path / "c", progress=False)
    same = og.load_omniglot_splits(tmp_path / "d", 8, num_train=6, cache_dir=tmp_path / "c", progress=False)
    assert sp.test.class_names == same.test.class_names  # the canonical split, every time
    with pytest.raises(TypeError, match="seed"):  # the training seed is not an argument of the split
        og.load_omniglot_splits(tmp_path / "d", 8, num_train=6, seed=3,  # type: ignore[call-arg]
                                cache_dir=tmp_path / "c", progress=False)
