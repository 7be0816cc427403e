"""Omniglot (Lake, Salakhutdinov and Tenenbaum, 2015) for N-way K-shot classification, MAML protocol.

On disk, the original layout (as the upstream zips unpack and as ``torchvision.datasets.Omniglot`` leaves it
under ``omniglot-py/``)::

    <root>/images_background/<Alphabet>/characterNN/<drawing>.png    30 alphabets, 964 characters
    <root>/images_evaluation/<Alphabet>/characterNN/<drawing>.png    20 alphabets, 659 characters

20 drawings per character, 1,623 characters, 32,460 PNGs of 105x105 1-bit pixels, ink black (0).
``root`` may also be the folder that holds ``omniglot-py/``.

Preprocessing (one image): 1-bit -> greyscale ``'L'`` FIRST (Pillow resizes mode ``'1'`` with nearest
neighbour whatever filter is asked), LANCZOS resize to ``image_size`` (28), inverted so ink is 1; stored as
``uint8`` (the exact 8-bit output of the resize; :class:`ClassSplit` hands it out as float32 in [0, 1]).
The 32,460 preprocessed images are cached (25 MB at 28x28) in a user cache directory
(:mod:`rkmeta_rl.supervised.image_cache`), never beside the data.

Split (Vinyals et al., 2016; Finn et al., 2017): all 1,623 characters (background and evaluation together)
are put in a fixed order and the first 1,200 are for meta-training, the remaining 423 for meta-test; an
optional validation slice is carved from the end of the training characters. The order is the original MAML
code's procedure made deterministic: the characters sorted by ``Alphabet/characterNN`` (that code listed the
folders in file-system order, which differs between machines), then shuffled with Python's
``random.Random(1).shuffle`` (that code's ``random.seed(1)``). It does not depend on the training seed;
``split_seed`` draws another order. Training characters are augmented with rotations by 90, 180 and 270
degrees as new classes (4,800 training classes). The protocol and its sources: docs/protocols.md; getting the
data (``python -m rkmeta_rl.data omniglot``): docs/data.md.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

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

__all__ = [
    "BACKGROUND", "EVALUATION", "SUBSETS", "NUM_BACKGROUND_CHARACTERS", "NUM_EVALUATION_CHARACTERS",
    "NUM_CHARACTERS", "DRAWINGS_PER_CHARACTER", "NUM_TRAIN_CHARACTERS", "OmniglotCharacter", "OmniglotIndex",
    "OmniglotData", "OmniglotSplits", "resolve_omniglot_root", "scan_omniglot", "preprocess_omniglot_image",
    "load_omniglot", "CANONICAL_SPLIT_SEED", "character_order", "check_split_size", "omniglot_splits",
    "load_omniglot_splits",
]

log = logging.getLogger(__name__)

BACKGROUND = "images_background"
EVALUATION = "images_evaluation"
SUBSETS: tuple[str, str] = (BACKGROUND, EVALUATION)
#: Counts of the complete dataset (Lake et al., 2015).
NUM_BACKGROUND_CHARACTERS = 964
NUM_EVALUATION_CHARACTERS = 659
NUM_CHARACTERS = NUM_BACKGROUND_CHARACTERS + NUM_EVALUATION_CHARACTERS
DRAWINGS_PER_CHARACTER = 20
#: Meta-training characters of the MAML protocol; the other 423 are for meta-test.
NUM_TRAIN_CHARACTERS = 1200

_LAYOUT = ("expected Omniglot's original layout: <root>/images_background/<Alphabet>/characterNN/*.png and "
           "<root>/images_evaluation/<Alphabet>/characterNN/*.png (root may also be torchvision's "
           "'omniglot-py' folder or the folder that holds it)")
_GET = "get it with: python -m rkmeta_rl.data omniglot (see docs/data.md)"
_FORMAT_VERSION = 1  # bump when preprocessing changes: old caches are then ignored


@dataclass(frozen=True)
class OmniglotCharacter:
    """One character class: ``subset/alphabet/character`` and its drawings (sorted file paths)."""

    subset: str
    alphabet: str
    character: str
    files: tuple[Path, ...]

    @property
    def name(self) -> str:
        """``"images_background/Latin/character05"``."""
        return f"{self.subset}/{self.alphabet}/{self.character}"


@dataclass(frozen=True)
class OmniglotIndex:
    """The file tree of an Omniglot root: characters in a fixed order (subsets as in :data:`SUBSETS`,
    then alphabet and character folder names sorted)."""

    root: Path
    characters: tuple[OmniglotCharacter, ...]

    def num_characters(self, subset: str | None = None) -> int:
        """Characters in ``subset`` (``"images_background"`` / ``"images_evaluation"``), or in all."""
        return sum(1 for c in self.characters if subset is None or c.subset == subset)

    def num_alphabets(self, subset: str | None = None) -> int:
        """Alphabets in ``subset`` or in all."""
        return len({(c.subset, c.alphabet) for c in self.characters if subset is None or c.subset == subset})

    @property
    def num_images(self) -> int:
        """Drawings over all characters."""
        return sum(len(c.files) for c in self.characters)

    def drawings_per_character(self) -> dict[int, int]:
        """``{drawings: number of characters with that many}`` (the complete set: ``{20: 1623}``)."""
        out: dict[int, int] = {}
        for c in self.characters:
            out[len(c.files)] = out.get(len(c.files), 0) + 1
        return out

    def files(self) -> list[Path]:
        """All PNG paths in index order."""
        return [f for c in self.characters for f in c.files]


def resolve_omniglot_root(root: str | os.PathLike[str]) -> Path:
    """The folder that directly holds ``images_background/`` and ``images_evaluation/``.

    Accepts that folder itself, torchvision's ``omniglot-py`` folder, or the folder holding ``omniglot-py``.

    Raises:
        FileNotFoundError: ``root`` does not exist, or holds neither subset folder (message names the path and
            the expected layout), or only one of the two.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"Omniglot root {path} does not exist or is not a folder; {_LAYOUT}; {_GET}")
    for cand in (path, path / "omniglot-py"):
        present = [s for s in SUBSETS if (cand / s).is_dir()]
        if len(present) == 2:
            return cand
        if len(present) == 1:
            missing = next(s for s in SUBSETS if s not in present)
            raise FileNotFoundError(f"Omniglot folder {cand / missing} is missing (found {cand / present[0]}); "
                                    f"{_LAYOUT}. Unzip images_background.zip and images_evaluation.zip there.")
    raise FileNotFoundError(f"no Omniglot data under {path}: neither {path / BACKGROUND} nor "
                            f"{path / 'omniglot-py' / BACKGROUND} exists; {_LAYOUT}; {_GET}")


def scan_omniglot(root: str | os.PathLike[str]) -> OmniglotIndex:
    """Index the file tree (no image is read).

    Raises:
        FileNotFoundError: see :func:`resolve_omniglot_root`.
        ValueError: a wrong layout: a subset without alphabet folders, an alphabet without character folders,
            a character folder without PNGs, or loose files where folders are expected.
    """
    base = resolve_omniglot_root(root)
    chars: list[OmniglotCharacter] = []
    for subset in SUBSETS:
        sdir = base / subset
        alphabets = sorted((e for e in os.scandir(sdir) if not e.name.startswith(".")), key=lambda e: e.name)
        loose = [e.name for e in alphabets if not e.is_dir()]
        if loose:
            raise ValueError(f"wrong Omniglot layout in {sdir}: files {loose[:3]} where alphabet folders are "
                             f"expected; {_LAYOUT}")
        if not alphabets:
            raise ValueError(f"wrong Omniglot layout: {sdir} holds no alphabet folders; {_LAYOUT}")
        for a in alphabets:
            entries = sorted((e for e in os.scandir(a.path) if not e.name.startswith(".")), key=lambda e: e.name)
            cdirs = [e for e in entries if e.is_dir()]
            if not cdirs or len(cdirs) != len(entries):
                raise ValueError(f"wrong Omniglot layout in {a.path}: expected only character folders "
                                 f"(characterNN/), found {[e.name for e in entries[:3]]}; {_LAYOUT}")
            for c in cdirs:
                pngs = sorted(Path(e.path) for e in os.scandir(c.path)
                              if e.is_file() and e.name.lower().endswith(".png"))
                if not pngs:
                    raise ValueError(f"wrong Omniglot layout: character folder {c.path} holds no .png drawings; "
                                     f"{_LAYOUT}")
                chars.append(OmniglotCharacter(subset, a.name, c.name, tuple(pngs)))
    return OmniglotIndex(base, tuple(chars))


def preprocess_omniglot_image(path: str | os.PathLike[str], image_size: int = 28) -> np.ndarray:
    """One drawing as ``uint8 [image_size, image_size]``, ink = 255.

    The 1-bit PNG is converted to greyscale ``'L'`` before the LANCZOS resize: Pillow resizes mode ``'1'``
    with nearest neighbour whatever filter is asked, which would leave only 0/1 pixels.

    Raises:
        ImageDecodeError: the file cannot be decoded (truncated, not an image); the message names it.
    """
    return 255 - decode_image(path, "L", image_size, "Omniglot")


class OmniglotData(NamedTuple):
    """All Omniglot drawings, preprocessed.

    Attributes:
        index: the file tree (character order, names, counts).
        images: ``uint8 [num_images, S, S]``, ink = 255, in ``index.files()`` order.
        offsets: ``int64 [num_characters + 1]``; character ``i``'s drawings are rows ``offsets[i]:offsets[i+1]``.
    """

    index: OmniglotIndex
    images: np.ndarray
    offsets: np.ndarray

    @property
    def image_size(self) -> int:
        """Side ``S`` of the square images."""
        return int(self.images.shape[1])

    def to_split(self, characters: np.ndarray | list[int], rotations: tuple[int, ...] = (0,)) -> ClassSplit:
        """A :class:`ClassSplit` of the given characters (indices into ``index.characters``)."""
        imgs = torch.from_numpy(self.images).unsqueeze(-1)
        members = tuple(torch.arange(int(self.offsets[c]), int(self.offsets[c + 1]), dtype=torch.int64)
                        for c in characters)
        names = tuple(self.index.characters[int(c)].name for c in characters)
        return ClassSplit(imgs, members, names, tuple(rotations))


def load_omniglot(root: str | os.PathLike[str], image_size: int = 28, *,
                  cache_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                  workers: int = 1) -> OmniglotData:
    """Scan and preprocess all drawings, through the on-disk cache.

    Args:
        root: Omniglot root (see :func:`resolve_omniglot_root`).
        image_size: side of the resized square images (MAML: 28).
        cache_dir: cache directory (default ``$RKMETA_CACHE`` or ``~/.cache/rkmeta_rl``); never inside ``root``.
        progress: show a tqdm bar while building the cache.
        workers: processes decoding PNGs on a cache miss (1: in this process).

    Returns:
        :class:`OmniglotData` with ``uint8 [N, S, S]`` images.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    index = scan_omniglot(root)
    cdir = resolve_cache_dir(cache_dir, index.root)
    files = index.files()
    key = {"dataset": "omniglot", "root": str(index.root.resolve()), "image_size": image_size,
           "version": _FORMAT_VERSION, "content": file_fingerprint(index.root, files)}
    path = cache_file(cdir, f"omniglot-{image_size}px", key)

    def build() -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        fn = functools.partial(preprocess_omniglot_image, image_size=image_size)
        imgs = map_with_progress(fn, files, total=len(files), workers=workers,
                                 desc=f"Omniglot {image_size}px", progress=progress)
        log.info("preprocessed %d Omniglot images in %.1f s", len(files), time.perf_counter() - t0)
        return {"images": np.stack(imgs)}

    shape = (len(files), image_size, image_size)

    images = load_or_build(path, build, images_check(shape))["images"]
    offsets = np.concatenate([[0], np.cumsum([len(c.files) for c in index.characters])]).astype(np.int64)
    return OmniglotData(index, images, offsets)


#: Seed of the canonical character order: the original MAML code's ``random.seed(1)``.
CANONICAL_SPLIT_SEED = 1


def _check_split_seed(split_seed: object) -> None:
    if split_seed is not None and (isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer))):
        raise ValueError(f"split_seed must be an integer or None, got {split_seed!r}")


def character_order(index: OmniglotIndex, split_seed: int | None = None) -> np.ndarray:
    """The character order the split is cut from: ``int64 [num_characters]`` indices into ``index.characters``.

    The characters are sorted by ``(alphabet, character, subset)`` names, so the order does not depend on how
    the file system lists folders, then shuffled in place by ``random.Random(seed).shuffle`` with
    ``seed = CANONICAL_SPLIT_SEED`` (1) when ``split_seed`` is None.
    """
    _check_split_seed(split_seed)
    chars = index.characters
    order = sorted(range(len(chars)), key=lambda i: (chars[i].alphabet, chars[i].character, chars[i].subset))
    random.Random(CANONICAL_SPLIT_SEED if split_seed is None else int(split_seed)).shuffle(order)
    return np.asarray(order, dtype=np.int64)


def check_split_size(index: OmniglotIndex, num_train: int = NUM_TRAIN_CHARACTERS, num_val: int = 0) -> None:
    """Refuse a split the tree is too small for, in words (before any image is decoded).

    Raises:
        ValueError: ``num_train`` below 1, ``num_val`` outside ``[0, num_train)``, or a tree with no more than
            ``num_train`` characters (the message gives how many were found and how many the split needs).
    """
    if isinstance(num_train, bool) or not isinstance(num_train, (int, np.integer)) or num_train < 1:
        raise ValueError(f"num_train must be an integer >= 1, got {num_train!r}")
    if isinstance(num_val, bool) or not isinstance(num_val, (int, np.integer)) or not 0 <= num_val < num_train:
        raise ValueError(f"num_val must be in [0, num_train) = [0, {num_train}), got {num_val!r}")
    n = index.num_characters()
    if n <= num_train:
        raise ValueError(
            f"the Omniglot folder {index.root} holds {n} characters ({index.num_alphabets()} alphabets), but the "
            f"split needs more than {num_train} (num_train={num_train} for meta-training and at least one for "
            f"meta-test); the complete dataset has {NUM_CHARACTERS} ({NUM_BACKGROUND_CHARACTERS} in {BACKGROUND}, "
            f"{NUM_EVALUATION_CHARACTERS} in {EVALUATION}): is the folder complete? Get it with: "
            "python -m rkmeta_rl.data omniglot")


class OmniglotSplits(NamedTuple):
    """Meta-train / validation / meta-test class splits (``val`` is None without a validation slice)."""

    train: ClassSplit
    val: ClassSplit | None
    test: ClassSplit


def omniglot_splits(data: OmniglotData, *, split_seed: int | None = None, num_train: int = NUM_TRAIN_CHARACTERS,
                    num_val: int = 0, train_rotations: tuple[int, ...] = (0, 1, 2, 3),
                    eval_rotations: tuple[int, ...] = (0,)) -> OmniglotSplits:
    """Split the characters (MAML protocol: 1200 train, the rest test) along :func:`character_order`.

    Args:
        data: from :func:`load_omniglot`.
        split_seed: None for the canonical, fixed split; an integer draws another one. Independent of the
            training seed.
        num_train: characters for meta-training, validation slice included (1200).
        num_val: the last ``num_val`` of the training characters become the validation split.
        train_rotations: quarter turns that make new training classes ((0, 1, 2, 3): 4 x 1200 = 4800 classes).
        eval_rotations: rotations for the validation and test classes (default none).

    Returns:
        :class:`OmniglotSplits`.

    Raises:
        ValueError: see :func:`check_split_size` and :func:`character_order`.
    """
    check_split_size(data.index, num_train, num_val)
    perm = character_order(data.index, split_seed)
    tr, va, te = perm[:num_train - num_val], perm[num_train - num_val:num_train], perm[num_train:]
    return OmniglotSplits(data.to_split(tr, train_rotations), data.to_split(va, eval_rotations) if num_val else None,
                          data.to_split(te, eval_rotations))


def load_omniglot_splits(root: str | os.PathLike[str], image_size: int = 28, *, split_seed: int | None = None,
                         num_train: int = NUM_TRAIN_CHARACTERS, num_val: int = 0,
                         cache_dir: str | os.PathLike[str] | None = None, progress: bool = True,
                         workers: int = 1) -> OmniglotSplits:
    """:func:`load_omniglot` then :func:`omniglot_splits` with the MAML defaults.

    The split arguments and the tree's size are checked before any image is decoded. The split does not follow
    the training seed: ``split_seed`` draws another one.
    """
    _check_split_seed(split_seed)
    check_split_size(scan_omniglot(root), num_train, num_val)
    data = load_omniglot(root, image_size, cache_dir=cache_dir, progress=progress, workers=workers)
    return omniglot_splits(data, split_seed=split_seed, num_train=num_train, num_val=num_val)
