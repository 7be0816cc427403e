"""The analytic path (``path="analytic"``) and the hand-written conv4 it runs on.

Exactness, all in float64: the unfold and fold against ``F.unfold`` / ``F.fold`` and each other's adjoint; the
per-task loss and gradient against autograd; the Hessian-vector product against autograd's double backward and
against central finite differences of the gradient (batch norm included, so normalisation is proved by finite
differences on this path too, see https://github.com/pytorch/functorch/issues/534); the whole meta-gradient
against the loop reference path for every kind of setting the path accepts. The meta-gradient against finite
differences of the meta-objective is in ``tests/test_conv4.py`` (parametrised over the paths).
"""

from __future__ import annotations

from typing import Callable, Mapping

import pytest
import torch
import torch.nn.functional as F

import rkmeta_rl.rk.analytic as analytic_mod
from rkmeta_rl.rk import PerStage, TaskBatchedLoss, choose_path, meta_gradient
from rkmeta_rl.rk.analytic import default_chunk, has_analytic
from rkmeta_rl.rk.batched import task_elements
from rkmeta_rl.supervised.conv4 import conv4_losses, init_conv4
from rkmeta_rl.supervised.conv4_analytic import Conv4Analytic, _kernel_matrix, fold3x3_products, unfold3x3
from rkmeta_rl.supervised.conv4_tasks import conv4_forward_tasks, task_cross_entropy

DT = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _params(tasks: int, *, size: int = 20, channels: int = 1, filters: int = 5, bias: bool = False,
            seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-task parameters ``[T, *shape]``, perturbed so that no two tasks share them."""
    g = _gen(seed)
    base = init_conv4(channels, 4, filters=filters, pool="stride", image_size=size, conv_bias=bias, generator=g,
                      dtype=DT)
    return {k: v + 0.2 * torch.randn(tasks, *v.shape, generator=g, dtype=DT) for k, v in base.items()}


def _tasks(tasks: int, per_task: int, *, size: int = 20, channels: int = 1, seed: int = 1) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    return {"xs": torch.rand(tasks, per_task, channels, size, size, generator=g, dtype=DT),
            "ys": torch.randint(0, 4, (tasks, per_task), generator=g)}


def _autograd_loss(params: dict[str, torch.Tensor], tasks: dict[str, torch.Tensor]) -> torch.Tensor:
    return task_cross_entropy(conv4_forward_tasks(params, tasks["xs"]), tasks["ys"])


@pytest.mark.parametrize("size,stride,padding", [(28, 2, 1), (7, 2, 1), (6, 1, 1), (9, 2, 0), (5, 1, 0)])
def test_unfold_is_im2col_and_the_tapwise_fold_its_adjoint(size: int, stride: int, padding: int) -> None:
    g = _gen(2)
    t, b, c = 2, 3, 4
    x = torch.randn(t, b, size, size, c, generator=g, dtype=DT)
    u = unfold3x3(x, stride, padding)
    ref = F.unfold(x.permute(0, 1, 4, 2, 3).reshape(t * b, c, size, size), 3, padding=padding, stride=stride)
    # F.unfold: [T B, (c, i, j), L]; ours: [T, (b, L), (i, j, c)]
    ref = ref.view(t, b, c, 3, 3, -1).permute(0, 1, 5, 3, 4, 2).reshape(t, -1, 9 * c)
    assert torch.equal(u, ref)
    # the input gradient of sum_i <dZ_i, U K_i>: autograd through the unfold against the tap-wise fold
    terms = [(torch.randn(t, u.shape[1], 5, generator=g, dtype=DT), torch.randn(t, 5, 9 * c, generator=g, dtype=DT))
             for _ in range(2)]
    leaf = x.clone().requires_grad_(True)
    uu = unfold3x3(leaf, stride, padding)
    ref = torch.autograd.grad(sum((dz * torch.bmm(uu, k.mT)).sum() for dz, k in terms), leaf)[0]
    back = fold3x3_products(terms, b, (size, size), stride, padding)
    assert back.shape == x.shape
    assert torch.allclose(back, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size,channels,bias", [(28, 1, False), (20, 1, True), (12, 3, False)])
def test_value_and_gradient_equal_autograd(size: int, channels: int, bias: bool) -> None:
    params = _params(3, size=size, channels=channels, bias=bias)
    tasks = _tasks(3, 4, size=size, channels=channels)
    loss, grads, _ = Conv4Analytic("xs", "ys").value_and_grad(params, tasks)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ref = _autograd_loss(leaves, tasks)
    ref_g = torch.autograd.grad(ref.sum(), list(leaves.values()))
    assert torch.allclose(loss, ref, rtol=0, atol=1e-13)
    assert torch.allclose(Conv4Analytic("xs", "ys").value(params, tasks), ref, rtol=0, atol=1e-13)
    for k, gr in zip(leaves, ref_g):
        assert grads[k].shape == params[k].shape
        assert torch.allclose(grads[k], gr, rtol=0, atol=1e-12), k


def _random_hvp(params: dict[str, torch.Tensor], tasks: dict[str, torch.Tensor], seed: int
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A random direction ``v`` and the analytic ``H v`` at ``params``."""
    g = _gen(seed)
    v = {k: torch.randn(x.shape, generator=g, dtype=DT) for k, x in params.items()}
    f = Conv4Analytic("xs", "ys")
    _, _, state = f.value_and_grad(params, tasks)
    assert state is not None
    return v, f.hvp(state, v)


@pytest.mark.parametrize("size,channels,bias", [(28, 1, False), (20, 1, True), (12, 3, False)])
def test_hessian_vector_product_equals_double_backward(size: int, channels: int, bias: bool) -> None:
    params = _params(3, size=size, channels=channels, bias=bias)
    tasks = _tasks(3, 4, size=size, channels=channels)
    v, hv = _random_hvp(params, tasks, seed=5)
    leaves = {k: x.clone().requires_grad_(True) for k, x in params.items()}
    grads = torch.autograd.grad(_autograd_loss(leaves, tasks).sum(), list(leaves.values()), create_graph=True)
    ref = torch.autograd.grad(sum((gr * v[k]).sum() for k, gr in zip(leaves, grads)), list(leaves.values()))
    for k, r in zip(leaves, ref):
        scale = max(1.0, float(r.abs().max()))
        assert torch.allclose(hv[k], r, rtol=0, atol=1e-11 * scale), k


def test_hessian_vector_product_matches_finite_differences_of_the_gradient() -> None:
    """``H v = (grad L(theta + h v) - grad L(theta - h v)) / 2h`` to O(h^2), batch norm and ReLU included."""
    params = _params(2, size=20, bias=True)
    tasks = _tasks(2, 5)
    v, hv = _random_hvp(params, tasks, seed=7)
    f = Conv4Analytic("xs", "ys")
    h = 1e-5
    plus = f.value_and_grad({k: x + h * v[k] for k, x in params.items()}, tasks, keep=False)[1]
    minus = f.value_and_grad({k: x - h * v[k] for k, x in params.items()}, tasks, keep=False)[1]
    worst = 0.0
    for k in params:
        fd = (plus[k] - minus[k]) / (2 * h)
        worst = max(worst, float((hv[k] - fd).abs().max() / max(float(fd.abs().max()), 1e-3)))
    assert worst < 1e-6, worst


def test_prepared_layout_keeps_values_and_makes_the_kernel_matrix_a_view() -> None:
    params = _params(2)
    prepared = Conv4Analytic.prepare(params)
    for k in params:
        assert torch.equal(prepared[k], params[k])
    w = prepared["conv2.weight"]
    km = _kernel_matrix(w)
    assert km.data_ptr() == w.data_ptr() and km.shape == (2, w.shape[1], 9 * w.shape[2])
    step = w - 0.3 * w  # arithmetic keeps the layout
    assert _kernel_matrix(step).is_contiguous()
    f = Conv4Analytic("xs", "ys")
    tasks = _tasks(2, 4)
    a, b = f.value_and_grad(params, tasks)[1], f.value_and_grad(prepared, tasks)[1]
    for k in params:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-14)


def _problem(tasks: int = 3, queries: int = 2, seed: int = 0
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = _gen(seed)
    params = init_conv4(1, 4, filters=6, pool="stride", image_size=20, generator=g, dtype=DT)
    data = {"xs": torch.randn(tasks, 4, 1, 20, 20, generator=g, dtype=DT), "ys": torch.arange(4).repeat(tasks, 1),
            "xq": torch.randn(tasks, 4 * queries, 1, 20, 20, generator=g, dtype=DT),
            "yq": torch.arange(4).repeat(tasks, queries)}
    return params, data


SETTINGS = [
    dict(method="midpoint", inner_lr=0.4),
    dict(method="ralston", inner_lr=0.3, inner_steps=3),
    dict(method="heun", inner_lr=0.4, first_order=True),
    dict(method="euler", inner_lr=0.4, inner_steps=2),
    dict(method="itb", inner_lr=0.4, step_rule="fixed"),
    dict(method=0.7, inner_lr=0.3, inner_steps=2),
    dict(method={"fc.*": "midpoint", "*": "ralston"}, inner_lr=0.4),
    dict(method="midpoint", inner_lr=0.4, adapt="fc.*"),
]


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_analytic_meta_gradient_equals_the_loop_reference(kw: dict) -> None:
    params, data = _problem()
    losses = conv4_losses("stride")
    ref, ref_st = meta_gradient(params, *losses, data, path="loop", **kw)
    got, got_st = meta_gradient(params, *losses, data, path="analytic", **kw)
    for k in params:
        assert got[k].shape == params[k].shape and got[k].is_contiguous()
        assert torch.allclose(got[k], ref[k], rtol=0, atol=1e-12), k
    assert set(got_st) == set(ref_st)
    for k in ref_st:
        assert abs(got_st[k] - ref_st[k]) < 1e-12, k


@pytest.mark.parametrize("path", ["loop", "vmap", "batched", "analytic"])
@pytest.mark.parametrize("method", ["midpoint", "euler"])
@pytest.mark.parametrize("extra", [{}, {"first_order": True, "chunk_size": 2}], ids=["plain", "first-order-chunks"])
def test_without_diagnostics_the_same_gradient_and_the_losses_computed_anyway(path: str, method: str,
                                                                               extra: dict) -> None:
    """``stats=False``: the same meta-gradient (bit for bit), the support loss before adaptation and, with a
    second stage, the query loss after it, equal to those of ``stats=True``; no forward-only diagnostics."""
    params, data = _problem()
    losses = conv4_losses("stride")
    if path == "loop":
        extra = {k: v for k, v in extra.items() if k != "chunk_size"}  # the loop takes no chunks
    full_g, full = meta_gradient(params, *losses, data, method, 0.4, 2, path=path, **extra)
    g, st = meta_gradient(params, *losses, data, method, 0.4, 2, path=path, stats=False, **extra)
    assert all(torch.equal(g[k], full_g[k]) for k in params)
    kept = {"support_loss_pre", "num_tasks"} | ({"query_loss_post"} if method == "midpoint" else set())
    assert set(st) == kept and set(full) >= kept | {"query_loss_pre", "support_loss_post", "query_loss_post"}
    for k in kept:
        assert st[k] == full[k], k


def test_two_stage_per_stage_data_and_chunks() -> None:
    params, data = _problem(tasks=3)
    _, other = _problem(tasks=3, seed=4)
    stages = PerStage([data, other])
    losses = conv4_losses("stride")
    ref = meta_gradient(params, *losses, stages, "ralston", 0.4, path="loop")[0]
    for chunk in (None, 1, 2):
        got = meta_gradient(params, *losses, stages, "ralston", 0.4, path="analytic", chunk_size=chunk)[0]
        for k in params:
            assert torch.allclose(got[k], ref[k], rtol=0, atol=1e-12), (chunk, k)


def test_default_chunk_keeps_small_tasks_together_and_splits_large_ones_evenly() -> None:
    def episode(queries: int, ways: int = 5) -> dict[str, torch.Tensor]:
        n = ways * queries
        return {"xs": torch.zeros(32, ways, 1, 28, 28), "ys": torch.zeros(32, ways, dtype=torch.long),
                "xq": torch.zeros(32, n, 1, 28, 28), "yq": torch.zeros(32, n, dtype=torch.long)}

    assert default_chunk(episode(1), 32) is None            # 32 x 7,850 elements: one program
    assert default_chunk(episode(15), 32) == 8              # 32 x 62,800: four chunks of 8
    assert default_chunk(episode(5), 32) == 16
    assert default_chunk(episode(1, ways=20), 32) == 16
    assert default_chunk(episode(15), 1) is None            # one task is one program whatever its size
    on_meta = {k: v.to("meta") for k, v in episode(15).items()}
    assert default_chunk(on_meta, 32) is None               # the rule is the CPU's: other devices take all at once


def test_without_a_chunk_size_large_tasks_run_in_chunks_with_the_same_result(monkeypatch: pytest.MonkeyPatch
                                                                            ) -> None:
    params, data = _problem(tasks=5)
    losses = conv4_losses("stride")
    ref = meta_gradient(params, *losses, data, "midpoint", 0.4, path="loop")[0]
    sizes: list[int] = []
    real = analytic_mod._analytic_chunk

    def spy(plan, params, support_loss, query_loss, task_data, n_tasks, stats):  # type: ignore[no-untyped-def]
        sizes.append(n_tasks)
        return real(plan, params, support_loss, query_loss, task_data, n_tasks, stats)

    monkeypatch.setattr(analytic_mod, "_analytic_chunk", spy)
    meta_gradient(params, *losses, data, "midpoint", 0.4, path="analytic")
    assert sizes == [5]  # small tasks: all at once
    sizes.clear()
    # a limit of two tasks' data: three chunks (2, 2, 1)
    monkeypatch.setattr(analytic_mod, "ANALYTIC_CHUNK_ELEMENTS", 2 * task_elements(data))
    got = meta_gradient(params, *losses, data, "midpoint", 0.4, path="analytic")[0]
    assert sizes == [2, 2, 1]
    for k in params:
        assert torch.allclose(got[k], ref[k], rtol=0, atol=1e-12), k


def test_float32_program_agrees_with_the_loop() -> None:
    """The default dtype: the same numbers to float32 rounding."""
    params, data = _problem(tasks=4)
    params = {k: v.float() for k, v in params.items()}
    data = {k: (v.float() if v.is_floating_point() else v) for k, v in data.items()}
    losses = conv4_losses("stride")
    ref = meta_gradient(params, *losses, data, "midpoint", 0.4, path="loop")[0]
    got = meta_gradient(params, *losses, data, "midpoint", 0.4, path="analytic")[0]
    for k in params:
        assert torch.allclose(got[k], ref[k], rtol=1e-4, atol=1e-5), k


def test_auto_takes_the_analytic_path_and_falls_back_for_more_stages() -> None:
    params, data = _problem(tasks=2, queries=1)
    losses = conv4_losses("stride")
    assert has_analytic(*losses) and choose_path(params, *losses, data) == "analytic"
    big = {"xs": data["xs"], "ys": data["ys"], "xq": torch.zeros(2, 60, 1, 20, 20, dtype=DT),
           "yq": torch.zeros(2, 60, dtype=torch.long)}
    assert choose_path(params, *losses, big) == "analytic"  # the fastest at every measured task size
    assert not has_analytic(*conv4_losses("max")) and choose_path(params, *conv4_losses("max"), data) == "batched"
    plain = tuple(TaskBatchedLoss(f.per_task, f.batched) for f in losses)
    assert not has_analytic(*plain) and choose_path(params, *plain, data) == "batched"
    # rk4 (four stages) is not covered: auto takes the batched path, an explicit request is refused
    stages = PerStage([data] + [_problem(tasks=2, queries=1, seed=10 + i)[1] for i in range(3)])
    ref = meta_gradient(params, *losses, stages, "rk4", 0.3, path="loop")[0]
    got = meta_gradient(params, *losses, stages, "rk4", 0.3)[0]
    for k in params:
        assert torch.allclose(got[k], ref[k], rtol=0, atol=1e-12), k
    with pytest.raises(ValueError, match="one- and two-stage methods; rk4 has 4 stages"):
        meta_gradient(params, *losses, stages, "rk4", 0.3, path="analytic")
    with pytest.raises(ValueError, match="path='analytic' needs losses with an analytic form"):
        meta_gradient(params, *plain, data, "midpoint", 0.4, path="analytic")
    with pytest.raises(ValueError, match="3x3 kernels"):
        Conv4Analytic("xs", "ys").value({"conv1.weight": torch.zeros(2, 3, 1, 5, 5)}, data)


class _LeastSquares:
    """A loss of one's own with the analytic form and no ``prepare``: ``L = mean_i (x_i w - y_i)^2 / 2`` per
    task, so ``grad = X^T (X w - y) / n`` and ``H v = X^T X v / n`` exactly."""

    def __init__(self, xs: str, ys: str) -> None:
        self.xs, self.ys = xs, ys

    def value(self, params: Mapping[str, torch.Tensor], tasks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        r = torch.bmm(tasks[self.xs], params["w"][..., None])[..., 0] - tasks[self.ys]
        return 0.5 * (r * r).mean(1)

    def value_and_grad(self, params: Mapping[str, torch.Tensor], tasks: Mapping[str, torch.Tensor], *,
                       keep: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        x = tasks[self.xs]
        r = torch.bmm(x, params["w"][..., None])[..., 0] - tasks[self.ys]
        g = torch.bmm(x.transpose(1, 2), r[..., None])[..., 0] / x.shape[1]
        return 0.5 * (r * r).mean(1), {"w": g}, x

    def hvp(self, state: torch.Tensor, v: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = state
        return {"w": torch.bmm(x.transpose(1, 2), torch.bmm(x, v["w"][..., None]))[..., 0] / x.shape[1]}


def test_a_loss_of_ones_own_with_the_analytic_form_equals_the_loop() -> None:
    g = _gen(9)
    data = {"xs": torch.randn(4, 6, 3, generator=g, dtype=DT), "ys": torch.randn(4, 6, generator=g, dtype=DT),
            "xq": torch.randn(4, 5, 3, generator=g, dtype=DT), "yq": torch.randn(4, 5, generator=g, dtype=DT)}
    params = {"w": torch.randn(3, generator=g, dtype=DT)}

    def per_task(xs: str, ys: str) -> Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]],
                                               torch.Tensor]:
        return lambda p, d: 0.5 * ((d[xs] @ p["w"] - d[ys]) ** 2).mean()

    losses = [TaskBatchedLoss(per_task(a, b), lambda p, d: torch.zeros(()), _LeastSquares(a, b))
              for a, b in (("xs", "ys"), ("xq", "yq"))]
    for kw in (dict(method="midpoint", inner_steps=3), dict(method="ralston"), dict(method="heun", first_order=True)):
        ref = meta_gradient(params, *losses, data, inner_lr=0.1, path="loop", **kw)
        got = meta_gradient(params, *losses, data, inner_lr=0.1, path="analytic", **kw)
        assert torch.allclose(got[0]["w"], ref[0]["w"], rtol=0, atol=1e-13), kw
        assert all(abs(got[1][k] - ref[1][k]) < 1e-13 for k in ref[1]), kw
    assert choose_path(params, *losses, data) == "vmap"  # no convolution: auto keeps vmap


@pytest.mark.parametrize("pool", ["stride", "max"])
def test_the_few_shot_metric_has_a_many_tasks_form(pool: str) -> None:
    from conftest import load_script

    from rkmeta_rl.supervised.fewshot_problem import FewShotProblem

    split = load_script("gpu_check")._random_split(8, 4, 0)
    prob = FewShotProblem("omniglot", split, split, ways=3, shots=1, queries=2, filters=4, pool=pool)  # type: ignore[arg-type]
    params = {k: v.double() for k, v in prob.init_params(_gen(3), torch.device("cpu")).items()}
    data = {k: (v.double() if v.is_floating_point() else v)
            for k, v in prob.sample_tasks(3, _gen(4), 2, torch.device("cpu")).items()}
    per_task = {k: v.unsqueeze(0).expand(3, *v.shape) for k, v in params.items()}
    got = prob.metric_fn.batched(per_task, data)
    for t in range(3):
        ref = prob.metric_fn(params, {k: v[t] for k, v in data.items()})
        for k in ref:
            assert torch.allclose(got[k][t], ref[k], rtol=0, atol=1e-12), (k, t)


def test_test_time_adaptation_on_the_analytic_path_equals_the_loop() -> None:
    """adapt_and_score with the support loss's hand-written gradients and the metric's many-tasks form: the
    per-task loop's numbers, per-parameter step sizes and chunks included."""
    from conftest import load_script

    from rkmeta_rl.rk import adapt_and_score
    from rkmeta_rl.supervised.fewshot_problem import FewShotProblem

    split = load_script("gpu_check")._random_split(8, 4, 0)
    prob = FewShotProblem("omniglot", split, split, ways=3, shots=1, queries=2, filters=5)
    params = {k: v.double() for k, v in prob.init_params(_gen(5), torch.device("cpu")).items()}
    data = {k: (v.double() if v.is_floating_point() else v)
            for k, v in prob.sample_tasks(5, _gen(6), 2, torch.device("cpu")).items()}
    rates = {k: (0.4 if k.startswith("fc") else 0.2) for k in params}
    for lr, chunk in ((0.4, None), (rates, 2)):
        ref = adapt_and_score(params, prob.support_loss, prob.metric_fn, data, lr, 3, path="loop")
        for path in ("auto", "analytic"):
            got = adapt_and_score(params, prob.support_loss, prob.metric_fn, data, lr, 3, path=path,
                                  chunk_size=chunk)
            for k in ref:
                assert got[k].shape == ref[k].shape == (5, 4)
                assert torch.allclose(got[k], ref[k], rtol=0, atol=1e-12), (k, path, chunk)
    with pytest.raises(ValueError, match="path='analytic' needs"):
        adapt_and_score(params, prob.support_loss, prob.metric_fn.per_task, data, 0.4, 3, path="analytic")
