"""N-way K-shot episode sampler (Vinyals et al., 2016; Finn et al., 2017) producing the engine's task pytree.

A task draws ``N`` distinct classes of a :class:`ClassSplit`, then per class ``K + Q`` distinct images: the
first ``K`` are the support set, the other ``Q`` the query set (disjoint). Labels ``0..N-1`` are assigned to
the drawn classes in a fresh random order per task, and the examples of each set are shuffled, so neither the
label of a class nor the position of an example carries information across tasks. A batch of tasks is the
dict pytree :func:`rkmeta_rl.rk.meta_gradient` takes, leading dimension = task::

    {"xs": float32 [T, N*K, C, H, W], "ys": int64 [T, N*K],
     "xq": float32 [T, N*Q, C, H, W], "yq": int64 [T, N*Q]}

Sampling uses one ``numpy.random.Generator``: the same seed gives the same batches.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .class_split import ClassSplit

__all__ = ["EpisodeSampler", "TaskBatch", "random_episodes"]

TaskBatch = dict[str, torch.Tensor]


def random_episodes(tasks: int, ways: int, shots: int, queries: int, generator: torch.Generator,
                    image_size: int = 28, channels: int = 1) -> TaskBatch:
    """A batch in :class:`EpisodeSampler`'s format with uniform random images (labels in class order): what a
    benchmark needs when only the shapes matter, not the pixels."""
    labels = torch.arange(ways)
    return {"xs": torch.rand(tasks, ways * shots, channels, image_size, image_size, generator=generator),
            "ys": labels.repeat_interleave(shots).repeat(tasks, 1),
            "xq": torch.rand(tasks, ways * queries, channels, image_size, image_size, generator=generator),
            "yq": labels.repeat_interleave(queries).repeat(tasks, 1)}


class EpisodeSampler:
    """Draws batches of N-way K-shot tasks from a :class:`ClassSplit`.

    Args:
        split: the classes to draw from.
        ways: ``N``, classes per task.
        shots: ``K``, support images per class.
        queries: ``Q``, query images per class (MAML: 15).
        seed: an ``int`` seed, or a ``numpy.random.Generator`` to draw from (shared, not copied).
        device: where the batches are put.
        dtype: floating dtype of the images (float32; float64 for gradient checks).

    Raises:
        ValueError: ``ways``, ``shots`` or ``queries`` below 1, fewer classes than ``ways``, or classes with
            fewer than ``shots + queries`` images (named in the message).
    """

    def __init__(self, split: ClassSplit, ways: int, shots: int, queries: int = 15, *,
                 seed: int | np.random.Generator | None = 0, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        for name, v in (("ways", ways), ("shots", shots), ("queries", queries)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if split.num_classes < ways:
            raise ValueError(f"{ways}-way tasks need at least {ways} classes; the split has {split.num_classes} "
                             f"({split.num_base_classes} base classes x {len(split.rotations)} rotations)")
        sizes = split.class_sizes()
        small = np.flatnonzero(sizes < shots + queries)
        if small.size:
            examples = ", ".join(f"{split.class_names[i]!r} ({sizes[i]})" for i in small[:3])
            raise ValueError(f"{small.size} of {len(sizes)} classes have fewer than shots + queries = "
                             f"{shots} + {queries} = {shots + queries} images, e.g. {examples}; lower shots/queries "
                             "or drop those classes")
        self.split = split
        self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.device = torch.device(device)
        self.dtype = dtype

    def _task(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n, k, q = self.ways, self.shots, self.queries
        classes = self.rng.choice(self.split.num_classes, size=n, replace=False)
        labels = self.rng.permutation(n)  # label of the i-th drawn class
        xs, xq = [], []
        for c in classes:
            pick = self.rng.choice(self.split.class_size(int(c)), size=k + q, replace=False)
            x = self.split.fetch(int(c), pick)
            xs.append(x[:k])
            xq.append(x[k:])
        ys = torch.from_numpy(np.repeat(labels, k))
        yq = torch.from_numpy(np.repeat(labels, q))
        ps = torch.from_numpy(self.rng.permutation(n * k))
        pq = torch.from_numpy(self.rng.permutation(n * q))
        return torch.cat(xs)[ps], ys[ps], torch.cat(xq)[pq], yq[pq]

    def sample(self, num_tasks: int) -> TaskBatch:
        """A batch of ``num_tasks`` tasks as the engine's pytree (see the module docstring for shapes)."""
        if not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
            raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")
        tasks = [self._task() for _ in range(int(num_tasks))]
        xs, ys, xq, yq = (torch.stack(parts) for parts in zip(*tasks))
        return {"xs": xs.to(self.device, self.dtype), "ys": ys.to(self.device, torch.int64),
                "xq": xq.to(self.device, self.dtype), "yq": yq.to(self.device, torch.int64)}

    def batches(self, num_tasks: int) -> Iterator[TaskBatch]:
        """An endless stream of :meth:`sample` batches."""
        while True:
            yield self.sample(num_tasks)
