"""A few-shot dataset split: images grouped by class, with optional rotation classes.

Omniglot and MiniImagenet both load into a :class:`ClassSplit`; the episode sampler
(:mod:`rkmeta_rl.supervised.episodes`) draws N-way K-shot tasks from one. Images are stored once as
``uint8 [N, H, W, C]`` (MiniImagenet's 38,400 training images take 0.8 GB so, 3.3 GB as float32) and
converted to ``float32 [k, C, H, W]`` in [0, 1] only for the few images a task draws.

Rotation classes (Santoro et al., 2016; Vinyals et al., 2016; Finn et al., 2017 for Omniglot): with
``rotations=(0, 1, 2, 3)`` every base class ``b`` yields four classes ``4 b + r``, the images of ``b`` turned
by ``r`` quarter turns (90 degrees counter-clockwise each), so 1200 training characters give 4800 classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = ["ClassSplit"]


@dataclass(frozen=True, eq=False)
class ClassSplit:
    """Images grouped by class.

    Attributes:
        images: ``uint8 [N, H, W, C]``, value ``v`` meaning intensity ``v / 255`` (Omniglot: ink = 1).
        members: one ``int64`` index tensor per base class, the rows of ``images`` of that class.
        class_names: one name per base class (``"images_background/Latin/character05"``, ``"n01532829"``).
        rotations: quarter turns that each make a class of their own; ``(0,)`` means no augmentation.
    """

    images: torch.Tensor
    members: tuple[torch.Tensor, ...]
    class_names: tuple[str, ...]
    rotations: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, H, W, C], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if len(self.members) != len(self.class_names):
            raise ValueError(f"{len(self.members)} member lists for {len(self.class_names)} class names")
        if not self.members:
            raise ValueError("a split needs at least one class")
        if not self.rotations or len(set(self.rotations)) != len(self.rotations) or \
                any(r not in (0, 1, 2, 3) for r in self.rotations):
            raise ValueError(f"rotations must be distinct quarter-turn counts in 0..3, got {self.rotations}")
        if any(r != 0 for r in self.rotations) and self.images.shape[1] != self.images.shape[2]:
            raise ValueError(f"rotation classes need square images, got {tuple(self.images.shape[1:3])}")
        n = self.images.shape[0]
        for name, m in zip(self.class_names, self.members):
            if m.dtype != torch.int64 or m.dim() != 1 or m.numel() == 0:
                raise ValueError(f"class {name!r}: members must be a non-empty int64 vector")
            if int(m.min()) < 0 or int(m.max()) >= n:
                raise ValueError(f"class {name!r}: member index out of range [0, {n})")

    @classmethod
    def from_labels(cls, images: torch.Tensor, labels: Sequence[int] | np.ndarray, class_names: Sequence[str],
                    rotations: tuple[int, ...] = (0,)) -> "ClassSplit":
        """Build from one integer label per image (``labels[i]`` indexes ``class_names``)."""
        lab = np.asarray(labels, dtype=np.int64)
        order = np.argsort(lab, kind="stable")
        bounds = np.searchsorted(lab[order], np.arange(len(class_names) + 1))
        members = tuple(torch.from_numpy(order[bounds[c]:bounds[c + 1]].copy()) for c in range(len(class_names)))
        return cls(images, members, tuple(class_names), tuple(rotations))

    @property
    def num_base_classes(self) -> int:
        """Classes before rotation augmentation."""
        return len(self.members)

    @property
    def num_classes(self) -> int:
        """Classes a task can draw: base classes times rotations."""
        return len(self.members) * len(self.rotations)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image as :meth:`fetch` returns it."""
        _, h, w, c = self.images.shape
        return (int(c), int(h), int(w))

    def class_size(self, c: int) -> int:
        """Number of images of class ``c`` (the same for all rotations of a base class)."""
        return int(self.members[c // len(self.rotations)].numel())

    def class_sizes(self) -> np.ndarray:
        """``int64 [num_base_classes]``: images per base class."""
        return np.array([m.numel() for m in self.members], dtype=np.int64)

    def class_name(self, c: int) -> str:
        """Name of class ``c``, with ``"@rot90"``-style suffix for a rotated class."""
        base, r = divmod(c, len(self.rotations))
        turns = self.rotations[r]
        return self.class_names[base] + (f"@rot{90 * turns}" if turns else "")

    def fetch(self, c: int, idx: np.ndarray | Sequence[int]) -> torch.Tensor:
        """Images ``idx`` (positions within the class, ``0 <= i < class_size(c)``) of class ``c``.

        Returns:
            ``float32 [len(idx), C, H, W]`` in [0, 1], rotated by the class's quarter turns.
        """
        base, r = divmod(int(c), len(self.rotations))
        return self.images_at(self.members[base][torch.as_tensor(np.asarray(idx, dtype=np.int64))], self.rotations[r])

    def images_at(self, rows: torch.Tensor, turns: int) -> torch.Tensor:
        """Rows ``rows`` (``int64 [n]``) of :attr:`images` as contiguous ``float32 [n, C, H, W]`` in [0, 1], turned
        by ``turns`` quarter turns counter-clockwise: one gather, one turned copy with the conversion, one scaling."""
        x = self.images[rows].permute(0, 3, 1, 2)
        x = torch.rot90(x, turns, dims=(2, 3)) if turns else x
        return x.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)

    def subset(self, base_classes: Sequence[int] | np.ndarray, rotations: tuple[int, ...] | None = None
               ) -> "ClassSplit":
        """The split restricted to some base classes (sharing the image storage), optionally with other
        rotations."""
        sel = [int(b) for b in base_classes]
        return ClassSplit(self.images, tuple(self.members[b] for b in sel), tuple(self.class_names[b] for b in sel),
                          self.rotations if rotations is None else tuple(rotations))
