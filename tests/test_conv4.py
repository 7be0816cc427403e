"""The functional conv4: shapes, batch norm from plain ops, and exact second-order meta-gradients on both engine
paths against central finite differences of the MAML meta-objective (Finn et al., 2017)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rkmeta_rl.rk import meta_gradient
from rkmeta_rl.supervised.class_split import ClassSplit
from rkmeta_rl.supervised.conv4 import batch_norm, conv4_forward, conv4_losses, feature_size, init_conv4
from rkmeta_rl.supervised.episodes import EpisodeSampler

DT = torch.float64
ALPHA = 0.4  # MAML's 5-way Omniglot inner rate: large, so the second-order term matters


def test_shapes_and_parameters() -> None:
    p = init_conv4(1, 5, filters=64, pool="stride", image_size=28)
    assert p["conv1.weight"].shape == (64, 1, 3, 3) and p["fc.weight"].shape == (5, 64)
    assert "conv1.bias" not in p and len(p) == 4 * 3 + 2
    assert conv4_forward(p, torch.rand(7, 1, 28, 28)).shape == (7, 5)
    q = init_conv4(3, 5, filters=32, pool="max", image_size=84, conv_bias=True)
    assert q["fc.weight"].shape == (5, 32 * 5 * 5) == (5, feature_size(84, 32, "max")) and "conv4.bias" in q
    assert conv4_forward(q, torch.rand(3, 3, 84, 84), pool="max").shape == (3, 5)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(init_conv4(1, 5, generator=g1).values(),
                                                  init_conv4(1, 5, generator=g2).values()))
    with pytest.raises(ValueError, match="pool"):
        init_conv4(1, 5, pool="avg")  # type: ignore[arg-type]


def test_batch_norm_matches_fused_forward() -> None:
    x = torch.randn(6, 4, 5, 5, dtype=DT)
    w, b = torch.randn(4, dtype=DT), torch.randn(4, dtype=DT)
    ref = F.batch_norm(x, None, None, w, b, training=True, eps=1e-5)
    assert torch.allclose(batch_norm(x, w, b, 1e-5), ref, rtol=0, atol=1e-12)
    p = init_conv4(1, 3, filters=4, generator=torch.Generator().manual_seed(0), dtype=DT)
    xi = torch.rand(5, 1, 28, 28, dtype=DT)
    assert torch.allclose(conv4_forward(p, xi), conv4_forward(p, xi, norm="fused"), atol=1e-12)


def _problem(pool: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    """A tiny conv4 (4 filters), 2 tasks of 2-way 1-shot with 3 queries per class, float64.

    Images of 20 px (stride: 20 -> 10 -> 5 -> 3 -> 2) or 16 px (max: 16 -> 8 -> 4 -> 2 -> 1) keep several values
    per channel in every batch norm even for the 2-image support set.
    """
    size = 20 if pool == "stride" else 16
    g = torch.Generator().manual_seed(0)
    p = init_conv4(1, 2, filters=4, pool=pool, image_size=size, generator=g, dtype=DT)  # type: ignore[arg-type]
    # move batch-norm scales/shifts off 1/0 so that every parameter's gradient is generic
    p = {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=DT) if k.startswith("bn") else v for k, v in p.items()}
    data = {"xs": torch.rand(2, 2, 1, size, size, generator=g, dtype=DT), "ys": torch.tensor([[0, 1], [1, 0]]),
            "xq": torch.rand(2, 6, 1, size, size, generator=g, dtype=DT),
            "yq": torch.tensor([[0, 1, 1, 0, 1, 0], [1, 1, 0, 0, 1, 0]])}
    return p, data, 2


def _meta_objective(params: dict[str, torch.Tensor], data: dict[str, torch.Tensor], n_tasks: int, pool: str
                    ) -> float:
    """J(theta) = mean_T L_Q(theta - alpha grad L_S(theta)), one inner step, by plain autograd."""
    support_loss, query_loss = conv4_losses(pool)  # type: ignore[arg-type]
    total = 0.0
    for t in range(n_tasks):
        task = {k: v[t] for k, v in data.items()}
        theta = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        grads = torch.autograd.grad(support_loss(theta, task), list(theta.values()))
        adapted = {k: v - ALPHA * g for (k, v), g in zip(theta.items(), grads)}
        total += float(query_loss(adapted, task).detach())
    return total / n_tasks


def _finite_difference_check(grads: dict[str, torch.Tensor], params: dict[str, torch.Tensor],
                             data: dict[str, torch.Tensor], n_tasks: int, pool: str, per_tensor: int = 3
                             ) -> float:
    """Largest relative error over ``per_tensor`` random coordinates of every parameter tensor.

    Step 1e-6: a larger step (1e-5) lets the perturbation cross a ReLU kink for one conv1 coordinate of this
    problem (measured: 2e-3 error at 1e-5, 6e-10 at 1e-6); float64 rounding stays near 1e-9 relative.
    """
    rng = np.random.default_rng(0)
    h, worst = 1e-6, 0.0
    for name, value in params.items():
        for i in rng.choice(value.numel(), size=min(per_tensor, value.numel()), replace=False):
            plus = {k: v.clone() for k, v in params.items()}
            minus = {k: v.clone() for k, v in params.items()}
            plus[name].view(-1)[i] += h
            minus[name].view(-1)[i] -= h
            fd = (_meta_objective(plus, data, n_tasks, pool) - _meta_objective(minus, data, n_tasks, pool)) / (2 * h)
            got = float(grads[name].reshape(-1)[i])
            worst = max(worst, abs(got - fd) / max(abs(fd), 1e-3))
    return worst


@pytest.mark.parametrize("pool", ["stride", "max"])
@pytest.mark.parametrize("path", ["vmap", "loop", "batched", "analytic"])
def test_second_order_meta_gradient_matches_finite_differences(path: str, pool: str) -> None:
    """Every path, batch norm included, against central differences of the meta-objective (float64)."""
    if path == "analytic" and pool == "max":
        pytest.skip("the hand-written conv4 is the strided one (Omniglot's)")
    params, data, n = _problem(pool)
    support_loss, query_loss = conv4_losses(pool)  # type: ignore[arg-type]
    grads, stats = meta_gradient(params, support_loss, query_loss, data, "midpoint", ALPHA, 1, path=path)
    assert stats["num_tasks"] == 2 and set(grads) == set(params)
    err = _finite_difference_check(grads, params, data, n, pool)
    assert err < 1e-6, f"{path}/{pool}: relative error {err:.2e}"


def test_first_order_is_visibly_different() -> None:
    """The check above can tell second- from first-order meta-gradients (FOMAML is off by O(1) here)."""
    params, data, n = _problem("stride")
    grads, _ = meta_gradient(params, *conv4_losses("stride"), data, "midpoint", ALPHA, 1, first_order=True,
                             path="loop")
    assert _finite_difference_check(grads, params, data, n, "stride", per_tensor=1) > 1e-2


def test_fused_batch_norm_under_vmap() -> None:
    """F.batch_norm (training mode, no running statistics) under the vmap path.

    https://github.com/pytorch/functorch/issues/534 reports a wrong batching rule for the fused batch-norm backward,
    and this project measured
    0.2-15 % meta-gradient errors with it on earlier PyTorch versions; conv4 therefore writes batch norm from
    plain ops. MEASURED HERE (torch 2.13.0+cpu, float64, this problem and also 5-way 8-filter 28 px, two inner
    steps, and the max-pool variant): the fused version AGREES with finite differences (worst relative error 3.5e-8
    on the checked coordinates, the same as the plain version) and with the loop path to ~1e-14, i.e. the bug does
    not show on this PyTorch build. So this test prints the measurement and asserts only that the plain version is
    right: a PyTorch regression cannot reach the library, which never uses ``norm="fused"``.
    """
    params, data, n = _problem("stride")
    fused = meta_gradient(params, *conv4_losses("stride", norm="fused"), data, "midpoint", ALPHA, 1, path="vmap")[0]
    plain = meta_gradient(params, *conv4_losses("stride"), data, "midpoint", ALPHA, 1, path="vmap")[0]
    err_fused = _finite_difference_check(fused, params, data, n, "stride", per_tensor=1)
    err_plain = _finite_difference_check(plain, params, data, n, "stride", per_tensor=1)
    assert err_plain < 1e-6
    assert np.isfinite(err_fused)
    diff = max(float((fused[k] - plain[k]).norm() / plain[k].norm()) for k in plain)
    print(f"fused batch norm under vmap: FD rel. error {err_fused:.1e} (plain {err_plain:.1e}); "
          f"fused vs plain {diff:.1e}")


def test_engine_on_sampled_episodes_both_paths_agree() -> None:
    """Sampler output goes straight into the engine; float32, both paths give the same meta-gradient."""
    n, per = 6, 4
    images = torch.randint(0, 256, (n * per, 12, 12, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = ClassSplit.from_labels(images, np.repeat(np.arange(n), per), [str(i) for i in range(n)], (0, 1, 2, 3))
    batch = EpisodeSampler(split, ways=3, shots=1, queries=2, seed=0).sample(3)
    params = init_conv4(1, 3, filters=8, image_size=12, generator=torch.Generator().manual_seed(1))
    losses = conv4_losses("stride")
    gv, sv = meta_gradient(params, *losses, batch, "midpoint", ALPHA, 2, path="vmap")
    gl, sl = meta_gradient(params, *losses, batch, "midpoint", ALPHA, 2, path="loop")
    for k in params:
        assert float((gv[k] - gl[k]).norm()) <= 1e-5 * float(gl[k].norm()), k
    assert abs(sv["query_loss_post"] - sl["query_loss_post"]) < 1e-5
