"""The N-way K-shot episode sampler: shapes, label shuffling, reproducibility, disjoint support/query, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rkmeta_rl.supervised.class_split import ClassSplit
from rkmeta_rl.supervised.episodes import EpisodeSampler, random_episodes


def _split(classes: int = 8, per_class: int = 20, rotations: tuple[int, ...] = (0,)) -> ClassSplit:
    """Constant 4x4 images whose value identifies the image: image i of class c has value c * per_class + i."""
    n = classes * per_class
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 4, 4, 1).contiguous()
    labels = np.repeat(np.arange(classes), per_class)
    return ClassSplit.from_labels(images, labels, [f"c{i}" for i in range(classes)], rotations)


def _ids(x: torch.Tensor) -> np.ndarray:
    return np.rint(x[..., 0, 0, 0].numpy() * 255).astype(int)


def test_shapes_dtypes_and_device() -> None:
    b = EpisodeSampler(_split(), ways=5, shots=2, queries=3, seed=0).sample(4)
    assert set(b) == {"xs", "ys", "xq", "yq"}
    assert b["xs"].shape == (4, 10, 1, 4, 4) and b["xq"].shape == (4, 15, 1, 4, 4)
    assert b["ys"].shape == (4, 10) and b["yq"].shape == (4, 15)
    assert b["xs"].dtype == torch.float32 and b["ys"].dtype == torch.int64 and b["xs"].device.type == "cpu"
    b64 = EpisodeSampler(_split(), 2, 1, seed=0, dtype=torch.float64, device="cpu").sample(1)
    assert b64["xs"].dtype == torch.float64 and b64["xq"].shape == (1, 30, 1, 4, 4)  # Q defaults to 15


def test_labels_consistent_disjoint_and_shuffled() -> None:
    per = 20
    sampler = EpisodeSampler(_split(per_class=per), ways=4, shots=3, queries=5, seed=1)
    b = sampler.sample(50)
    maps, orders = set(), set()
    for t in range(50):
        ids_s, ids_q = _ids(b["xs"][t]), _ids(b["xq"][t])
        ys, yq = b["ys"][t].numpy(), b["yq"][t].numpy()
        assert np.bincount(ys, minlength=4).tolist() == [3] * 4 and np.bincount(yq, minlength=4).tolist() == [5] * 4
        assert not set(ids_s) & set(ids_q) and len(set(ids_s)) == 12 and len(set(ids_q)) == 20
        cls_of = {}
        for i, y in zip(np.concatenate([ids_s, ids_q]), np.concatenate([ys, yq])):
            assert cls_of.setdefault(int(y), i // per) == i // per  # one class per label, support and query
        assert len(set(cls_of.values())) == 4
        maps.add(tuple(sorted(cls_of.items())))
        orders.add(tuple(ys))
    assert len(maps) > 40 and len(orders) > 40  # class -> label and example order change from task to task


def test_reproducible_with_seed_and_generator() -> None:
    a = EpisodeSampler(_split(), 5, 1, 15, seed=7).sample(3)
    b = EpisodeSampler(_split(), 5, 1, 15, seed=7).sample(3)
    c = EpisodeSampler(_split(), 5, 1, 15, seed=8).sample(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["xq"], c["xq"])
    s1 = EpisodeSampler(_split(), 5, 1, 15, seed=np.random.default_rng(3))
    s2 = EpisodeSampler(_split(), 5, 1, 15, seed=3)
    it = s1.batches(2)
    assert all(torch.equal(next(it)[k], s2.sample(2)[k]) for k in ("xs", "ys", "xq", "yq"))


def _one_task_at_a_time(sampler: EpisodeSampler, num_tasks: int) -> dict[str, torch.Tensor]:
    """The plain reference: draw and assemble each task on its own, class by class, with ``ClassSplit.fetch``."""
    n, k, q, split = sampler.ways, sampler.shots, sampler.queries, sampler.split
    parts = []
    for _ in range(num_tasks):
        classes = sampler.rng.choice(split.num_classes, size=n, replace=False)
        labels = sampler.rng.permutation(n)
        xs, xq = [], []
        for c in classes:
            x = split.fetch(int(c), sampler.rng.choice(split.class_size(int(c)), size=k + q, replace=False))
            xs.append(x[:k])
            xq.append(x[k:])
        ps, pq = torch.from_numpy(sampler.rng.permutation(n * k)), torch.from_numpy(sampler.rng.permutation(n * q))
        parts.append((torch.cat(xs)[ps], torch.from_numpy(np.repeat(labels, k))[ps], torch.cat(xq)[pq],
                      torch.from_numpy(np.repeat(labels, q))[pq]))
    return dict(zip(("xs", "ys", "xq", "yq"), (torch.stack(p) for p in zip(*parts))))


@pytest.mark.parametrize("ways,shots,queries,rotations", [(5, 1, 1, (0, 1, 2, 3)), (3, 2, 4, (0, 2)),
                                                           (4, 1, 15, (0,)), (1, 3, 2, (1, 3))])
def test_batches_equal_one_task_at_a_time(ways: int, shots: int, queries: int, rotations: tuple[int, ...]) -> None:
    """The batched assembly gives exactly the batches of drawing and assembling one task at a time (the same
    random draws in the same order, the same pixels, rotations and labels), batch after batch."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (120, 6, 6, 2), dtype=torch.uint8, generator=g)  # not rotation-symmetric
    split = ClassSplit.from_labels(images, np.repeat(np.arange(6), 20), [f"c{i}" for i in range(6)], rotations)
    fast = EpisodeSampler(split, ways, shots, queries, seed=11)
    plain = EpisodeSampler(split, ways, shots, queries, seed=11)
    for size in (1, 7, 3):
        a, b = fast.sample(size), _one_task_at_a_time(plain, size)
        for key in ("xs", "ys", "xq", "yq"):
            assert a[key].dtype == (torch.int64 if key[0] == "y" else torch.float32)
            assert torch.equal(a[key], b[key].to(a[key].dtype)), key
            assert a[key].is_contiguous(), key


def test_rotation_classes_are_drawn() -> None:
    split = _split(classes=2, per_class=20, rotations=(0, 1, 2, 3))
    assert split.num_classes == 8
    b = EpisodeSampler(split, ways=8, shots=1, queries=1, seed=0).sample(1)
    assert b["xs"].shape == (1, 8, 1, 4, 4)  # 8-way from 2 base classes x 4 rotations


def test_errors() -> None:
    with pytest.raises(ValueError, match="at least 9 classes; the split has 8"):
        EpisodeSampler(_split(), ways=9, shots=1)
    with pytest.raises(ValueError, match=r"fewer than shots \+ queries = 5 \+ 16 = 21 images, e.g. 'c0' \(20\)"):
        EpisodeSampler(_split(), ways=5, shots=5, queries=16)
    with pytest.raises(ValueError, match="shots must be an integer >= 1"):
        EpisodeSampler(_split(), ways=5, shots=0)
    with pytest.raises(ValueError, match="num_tasks"):
        EpisodeSampler(_split(), ways=5, shots=1).sample(0)
    uneven = ClassSplit.from_labels(torch.zeros(25, 2, 2, 1, dtype=torch.uint8), [0] * 20 + [1] * 5, ["big", "small"])
    with pytest.raises(ValueError, match="1 of 2 classes .* 'small' \\(5\\)"):
        EpisodeSampler(uneven, ways=2, shots=1, queries=15)


def test_fewshot_problem_train_and_test_queries() -> None:
    """Training episodes draw ``queries`` per class, evaluation episodes (val and test) ``test_queries``."""
    from rkmeta_rl.supervised.fewshot_problem import FewShotProblem

    tr, te = _split(classes=8), _split(classes=6)
    p = FewShotProblem("omniglot", tr, te, ways=5, shots=1, queries=1, test_queries=4, filters=4)
    g = torch.Generator().manual_seed(0)
    b = p.sample_tasks(2, g, 2, torch.device("cpu"))
    assert b["xs"].shape[:2] == (2, 5) and b["xq"].shape[:2] == (2, 5) and b["yq"].shape == (2, 5)
    for split in ("val", "test"):
        e = p.sample_tasks(3, g, 2, torch.device("cpu"), split=split)
        assert e["xs"].shape[:2] == (3, 5) and e["xq"].shape[:2] == (3, 20)
        assert np.bincount(e["yq"][0].numpy(), minlength=5).tolist() == [4] * 5
    same = FewShotProblem("omniglot", tr, te, ways=5, shots=1, queries=3, filters=4)
    assert same.test_queries == 3
    assert same.sample_tasks(1, g, 2, torch.device("cpu"), split="test")["xq"].shape[1] == 15
    with pytest.raises(ValueError, match="test_queries must be an integer >= 1 or None, got 0"):
        FewShotProblem("omniglot", tr, te, test_queries=0)
    with pytest.raises(ValueError, match=r"shots \+ queries = 1 \+ 20 = 21"):
        FewShotProblem("omniglot", tr, te, ways=5, shots=1, queries=1, test_queries=20)


def test_random_episodes_have_the_samplers_format() -> None:
    b = random_episodes(3, 5, 2, 4, torch.Generator().manual_seed(0), image_size=12, channels=3)
    assert b["xs"].shape == (3, 10, 3, 12, 12) and b["xq"].shape == (3, 20, 3, 12, 12)
    assert b["ys"].dtype == torch.int64 and b["ys"][0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert b["yq"].shape == (3, 20) and bool((b["xs"] >= 0).all() and (b["xs"] < 1).all())
