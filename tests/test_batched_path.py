"""The task-batched path (``path="batched"``) and the many-tasks conv4 it runs on.

Exactness: every building block against its per-task definition and against finite differences (float64,
``torch.autograd.gradcheck`` / ``gradgradcheck`` for the batched convolution and batch norm, which the second-order
program differentiates twice); the whole meta-gradient against the loop reference path for every kind of
setting; the conv4 meta-gradient against central finite differences of the meta-objective is in
``tests/test_conv4.py`` (parametrised over the paths, ``"batched"`` included).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rkmeta_rl.rk import PerStage, TaskBatchedLoss, choose_path, has_batched, meta_gradient
from rkmeta_rl.rk.batched import task_elements
from rkmeta_rl.rk.meta_gradient import BATCHED_MAX_TASK_ELEMENTS
from rkmeta_rl.supervised.conv4 import batch_norm, conv4_forward, conv4_losses, init_conv4
from rkmeta_rl.supervised.conv4_tasks import conv4_forward_tasks, task_batch_norm, task_conv2d

DT = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_task_conv2d_is_each_tasks_convolution(stride: int, bias: bool) -> None:
    g = _gen()
    t, b, c, f, s = 3, 2, 2, 4, 7
    x = torch.randn(t, b, c, s, s, generator=g, dtype=DT)
    w = torch.randn(t, f, c, 3, 3, generator=g, dtype=DT)
    bb = torch.randn(t, f, generator=g, dtype=DT) if bias else None
    out = task_conv2d(x.reshape(t * b, c, s, s), w, bb, t, stride=stride, padding=1)
    for i in range(t):
        ref = F.conv2d(x[i], w[i], None if bb is None else bb[i], stride=stride, padding=1)  # [B, F, Ho, Wo]
        assert torch.allclose(out[i].transpose(0, 1), ref, rtol=0, atol=1e-12)


def test_task_conv2d_and_batch_norm_second_derivatives_match_finite_differences() -> None:
    """Both are differentiated twice by the second-order program: first and second derivatives by finite
    differences (float64)."""
    g = _gen(1)
    t, b, c, f, s = 2, 2, 2, 3, 5
    x = torch.randn(t * b, c, s, s, generator=g, dtype=DT, requires_grad=True)
    w = torch.randn(t, f, c, 3, 3, generator=g, dtype=DT, requires_grad=True)
    bb = torch.randn(t, f, generator=g, dtype=DT, requires_grad=True)

    def conv(x_: torch.Tensor, w_: torch.Tensor, b_: torch.Tensor) -> torch.Tensor:
        return task_conv2d(x_, w_, b_, t, stride=2, padding=1)

    assert torch.autograd.gradcheck(conv, (x, w, bb))
    assert torch.autograd.gradgradcheck(conv, (x, w, bb))
    h = torch.randn(t, f, b, 3, 3, generator=g, dtype=DT, requires_grad=True)
    scale = (1 + 0.3 * torch.randn(t, f, generator=g, dtype=DT)).requires_grad_(True)
    shift = torch.randn(t, f, generator=g, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(task_batch_norm, (h, scale, shift))
    assert torch.autograd.gradgradcheck(task_batch_norm, (h, scale, shift))


def test_task_batch_norm_is_each_tasks_batch_norm() -> None:
    g = _gen(2)
    x = torch.randn(3, 4, 5, 2, 2, generator=g, dtype=DT)  # [T, F, B, H, W]
    w, b = torch.randn(3, 4, generator=g, dtype=DT), torch.randn(3, 4, generator=g, dtype=DT)
    out = task_batch_norm(x, w, b)
    for i in range(3):
        ref = batch_norm(x[i].transpose(0, 1), w[i], b[i])  # [B, F, H, W]
        assert torch.allclose(out[i].transpose(0, 1), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("pool,size,bias", [("stride", 20, False), ("stride", 28, True), ("max", 16, True)])
def test_conv4_forward_tasks_is_each_tasks_forward(pool: str, size: int, bias: bool) -> None:
    g = _gen(3)
    t = 3
    per = [init_conv4(1, 4, filters=5, pool=pool, image_size=size, conv_bias=bias, generator=g,  # type: ignore[arg-type]
                      dtype=DT) for _ in range(t)]
    params = {k: torch.stack([p[k] for p in per]) for k in per[0]}
    params = {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=DT) for k, v in params.items()}
    x = torch.rand(t, 6, 1, size, size, generator=g, dtype=DT)
    out = conv4_forward_tasks(params, x, pool=pool)
    assert out.shape == (t, 6, 4)
    for i in range(t):
        ref = conv4_forward({k: v[i] for k, v in params.items()}, x[i], pool=pool)  # type: ignore[arg-type]
        assert torch.allclose(out[i], ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="pool"):
        conv4_forward_tasks(params, x, pool="avg")


def _conv_problem(tasks: int = 3, queries: int = 2, seed: int = 0
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A small 3-way 1-shot conv4 problem in float64 (8 filters, 20 px)."""
    g = _gen(seed)
    p = init_conv4(1, 3, filters=8, image_size=20, generator=g, dtype=DT)
    p = {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=DT) if k.startswith("bn") else v for k, v in p.items()}
    lab = torch.arange(3)
    data = {"xs": torch.rand(tasks, 3, 1, 20, 20, generator=g, dtype=DT), "ys": lab.repeat(tasks, 1),
            "xq": torch.rand(tasks, 3 * queries, 1, 20, 20, generator=g, dtype=DT),
            "yq": lab.repeat_interleave(queries).repeat(tasks, 1)}
    return p, data


def _assert_same(a: tuple[dict[str, torch.Tensor], dict[str, float]],
                 b: tuple[dict[str, torch.Tensor], dict[str, float]]) -> None:
    (ga, sa), (gb, sb) = a, b
    assert set(ga) == set(gb) and sa.keys() == sb.keys()
    for k in ga:
        assert torch.allclose(ga[k], gb[k], rtol=1e-10, atol=1e-12), k
    for k in sa:
        assert abs(sa[k] - sb[k]) <= 1e-10 * max(1.0, abs(sa[k])), k


@pytest.mark.parametrize("kwargs", [
    {"method": "midpoint"},
    {"method": "heun"},                                        # a1 != 0: the support gradient enters g
    {"method": "euler"},                                       # one stage
    {"method": "ralston", "inner_steps": 2},
    {"method": "euler", "inner_steps": 2},                     # one stage, diagnostics adapt twice
    {"method": "midpoint", "first_order": True},
    {"method": "midpoint", "step_rule": "fixed", "adapt": "fc.*"},
    {"method": {"fc.*": "midpoint", "*": "ralston"}},
    {"method": "midpoint", "stats": False},
])
def test_batched_path_equals_loop_path(kwargs: dict) -> None:
    params, data = _conv_problem()
    losses = conv4_losses("stride")
    ref = meta_gradient(params, *losses, data, inner_lr=0.4, path="loop", **kwargs)
    got = meta_gradient(params, *losses, data, inner_lr=0.4, path="batched", **kwargs)
    _assert_same(ref, got)


def test_batched_path_equals_loop_path_with_per_stage_data() -> None:
    """A four-stage tableau (rk4) on PerStage data: stages >= 2 scored on their own query sets."""
    params, data = _conv_problem(tasks=2, queries=1)
    stages = PerStage([data] + [_conv_problem(tasks=2, queries=1, seed=10 + i)[1] for i in range(3)])
    losses = conv4_losses("stride")
    ref = meta_gradient(params, *losses, stages, "rk4", 0.3, path="loop")
    got = meta_gradient(params, *losses, stages, "rk4", 0.3, path="batched")
    _assert_same(ref, got)


def test_auto_takes_batched_for_small_conv4_tasks_and_checks_the_losses() -> None:
    """Losses with a batched form but no hand-written one (the analytic path's choice is in
    tests/test_conv4_analytic.py)."""
    params, data = _conv_problem(tasks=2)
    losses = tuple(TaskBatchedLoss(f.per_task, f.batched) for f in conv4_losses("stride"))
    assert task_elements(data) == 3 * 400 + 3 + 6 * 400 + 6 <= BATCHED_MAX_TASK_ELEMENTS
    assert has_batched(*losses) and choose_path(params, *losses, data) == "batched"
    assert choose_path(params, *losses) == "loop"  # task sizes unknown
    # Omniglot 5-way 1-shot with 3 queries per class: past the measured crossover, the loop
    big = {"xs": torch.zeros(2, 5, 1, 28, 28), "ys": torch.zeros(2, 5), "xq": torch.zeros(2, 15, 1, 28, 28),
           "yq": torch.zeros(2, 15)}
    assert task_elements(big) == 20 * 784 + 20 and choose_path(params, *losses, big) == "loop"
    plain = conv4_losses("stride", norm="fused")  # no batched form
    assert not has_batched(*plain) and choose_path(params, *plain, data) == "loop"
    mlp = {"w": torch.zeros(3, 2), "b": torch.zeros(3)}
    assert choose_path(mlp, *losses, data) == "vmap"
    _assert_same(meta_gradient(params, *losses, data, "midpoint", 0.4),
                 meta_gradient(params, *losses, data, "midpoint", 0.4, path="batched"))
    with pytest.raises(ValueError, match="path='batched' needs losses with a task-batched form"):
        meta_gradient(params, *plain, data, "midpoint", 0.4, path="batched")


@pytest.mark.parametrize("chunk", [1, 2])
def test_chunks_give_the_same_meta_gradient(chunk: int) -> None:
    params, data = _conv_problem(tasks=3)
    losses = conv4_losses("stride")
    _assert_same(meta_gradient(params, *losses, data, "heun", 0.4, path="loop"),
                 meta_gradient(params, *losses, data, "heun", 0.4, path="batched", chunk_size=chunk))
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        meta_gradient(params, *losses, data, "heun", 0.4, path="batched", chunk_size=0)


def test_task_batched_loss_is_the_per_task_loss_on_the_other_paths() -> None:
    """A TaskBatchedLoss is an ordinary loss for vmap and loop (it calls its per-task form)."""
    params, data = _conv_problem(tasks=2)
    sl, ql = conv4_losses("stride")
    assert isinstance(sl, TaskBatchedLoss)
    task = {k: v[0] for k, v in data.items()}
    assert torch.equal(sl(params, task), sl.per_task(params, task))
    _assert_same(meta_gradient(params, sl, ql, data, "midpoint", 0.4, path="vmap"),
                 meta_gradient(params, sl, ql, data, "midpoint", 0.4, path="batched"))


def test_adaptation_scoring_accepts_the_batched_setting() -> None:
    """A trainer's ``path="batched"`` also reaches evaluation, which adapts per task: there it runs as auto."""
    from rkmeta_rl.rk import adapt_and_score
    from rkmeta_rl.supervised.conv4 import accuracy

    params, data = _conv_problem(tasks=2)
    sl, _ = conv4_losses("stride")

    def metric(p: dict, d: dict) -> dict:
        return {"acc": accuracy(conv4_forward(p, d["xq"]), d["yq"])}

    a = adapt_and_score(params, sl, metric, data, 0.4, 2, path="batched")
    b = adapt_and_score(params, sl, metric, data, 0.4, 2, path="auto")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and a["acc"].shape == (2, 3)
