"""The MAML-TRPO update's pass-saving paths against plain computations (float64, tiny problems).

* conjugate gradient's accumulated ``A x`` equals the product, and TRPO makes exactly ``cg_iters`` products;
* the line search's evaluation without autograd (``objective_direct``) equals :meth:`MetaTRPOStep.objective`;
* the inner adaptation without autograd equals the autograd one;
* the whole meta-update (with per-group stage weights and step sizes) equals a plainly written reference: flat
  parameter vector, per-task loop, autograd gradient and double-backward Fisher, textbook CG and line search;
* reusing the adaptation's D0 pass in ``prepare`` changes nothing, and is not reused for other parameters.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_rl_fvp import make_batch
from test_rl_meta_trpo import textbook_trpo_step
from torch.distributions import Normal, kl_divergence

from rkmeta_rl.rk import get_tableau
from rkmeta_rl.rl import FlatBatch, GaussianMLPPolicy, MetaTRPOStep
from rkmeta_rl.rl.trpo import conjugate_gradient_product, trpo_update

D = torch.float64
T_, N_, OBS, ACT, HID = 3, 14, 2, 2, (4, 3)


def _batch(seed: int) -> FlatBatch:
    return make_batch(seed, T_, N_, OBS, ACT)


def _policy(activation: str = "tanh") -> GaussianMLPPolicy:
    return GaussianMLPPolicy(OBS, ACT, HID, activation, init_log_std=-0.2, dtype=D,
                             generator=torch.Generator().manual_seed(3))


def _spd(n: int) -> torch.Tensor:
    m = torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=D)
    return m @ m.T + n * torch.eye(n, dtype=D)


# ---- conjugate gradient ---------------------------------------------------------------------------------
@pytest.mark.parametrize("iters", [1, 3, 7])
def test_cg_product_equals_matrix_times_solution(iters: int) -> None:
    a = _spd(7)
    b = torch.linspace(-1.0, 2.0, 7, dtype=D)
    x, _, ax = conjugate_gradient_product(lambda v: a @ v, b, iters)
    torch.testing.assert_close(ax, a @ x, rtol=1e-12, atol=1e-12)


def test_trpo_makes_cg_iters_products_only() -> None:
    a = _spd(6)
    grad = torch.linspace(-1.0, 1.0, 6, dtype=D)
    calls = []

    def fvp(v: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return a @ v

    new, st = trpo_update(torch.zeros(6, dtype=D), grad, fvp, lambda x: (float(grad @ x), float(0.5 * x @ a @ x)),
                          0.0, max_kl=0.01, cg_iters=4)
    assert len(calls) == 4 and st.accepted
    # the full step is scaled so that the quadratic KL estimate is max_kl (the accepted one is a fraction of it)
    step = (torch.zeros(6, dtype=D) - new) / st.step_frac
    torch.testing.assert_close(0.5 * step @ a @ step, torch.tensor(0.01, dtype=D), rtol=1e-10, atol=0.0)


# ---- evaluation and adaptation without autograd ----------------------------------------------------------
METHODS = ["midpoint", "ralston", "heun", "euler", {"w2|b2|log_std": "midpoint", "*": "ralston"}]


def _perturbed(policy: GaussianMLPPolicy, scale: float = 0.05) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(9)
    return {k: (v + scale * torch.randn(v.shape, generator=g, dtype=D)).detach()
            for k, v in policy.params().items()}


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_objective_direct_equals_objective(method: object, inner_steps: int, activation: str) -> None:
    pol = _policy(activation)
    step = MetaTRPOStep(pol, method, inner_lr=0.3, inner_steps=inner_steps)  # type: ignore[arg-type]
    train = [_batch(1), _batch(4)][:inner_steps]
    valid = _batch(2) if step.adapts else None
    theta0 = {k: v.detach().clone().requires_grad_(True) for k, v in pol.params().items()}
    with torch.enable_grad():
        _, _, old = step.objective(theta0, train, valid, None, create_graph=False)
    cand = _perturbed(pol)
    with torch.enable_grad():
        j_ref, kl_ref, _ = step.objective({k: v.clone().requires_grad_(True) for k, v in cand.items()}, train,
                                          valid, old, create_graph=False)
    with torch.no_grad():
        j, kl = step.objective_direct(cand, train, valid, old)
    assert kl_ref.item() > 1e-6  # the candidate is away from theta_old: a real comparison
    torch.testing.assert_close(j, j_ref.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(kl, kl_ref.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("adapt", [None, "w2|b2|log_std"])
def test_adapt_without_autograd_equals_autograd(adapt: str | None) -> None:
    pol = _policy()
    step = MetaTRPOStep(pol, {"w2|b2|log_std": "midpoint", "*": "ralston"}, inner_lr=0.3, adapt=adapt)
    train = [_batch(1), _batch(4)]
    got = step.adapt(pol.params(), train)
    with torch.enable_grad():
        ref = step.adapt(pol.params(), train, create_graph=True)
    for k in got:
        torch.testing.assert_close(got[k], ref[k].detach(), rtol=1e-12, atol=1e-14)
    if adapt is not None:  # parameters outside adapt= do not move, and are copies (not views of the policy's)
        torch.testing.assert_close(got["w0"], pol.params()["w0"].detach().expand_as(got["w0"]))
        before = pol.params()["w0"].detach().clone()
        got["w0"].add_(1.0)
        assert torch.equal(pol.params()["w0"].detach(), before)


# ---- the whole meta-update against a plain reference ------------------------------------------------------
def _names(pol: GaussianMLPPolicy) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in pol.params().items()]


def _unpack(vec: torch.Tensor, shapes: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, shape in shapes:
        n = math.prod(shape)
        out[name] = vec[i:i + n].reshape(shape)
        i += n
    return out


def _per_name(values: dict[str, float], shapes: list[tuple[str, tuple[int, ...]]]) -> torch.Tensor:
    return torch.cat([torch.full((math.prod(s),), float(values[k]), dtype=D) for k, s in shapes])


def reference_update(pol: GaussianMLPPolicy, d0: FlatBatch, d1: FlatBatch, a_body: tuple[float, float],
                     a_head: tuple[float, float], alpha: dict[str, float], max_kl: float = 0.01,
                     damping: float = 1e-5) -> tuple[torch.Tensor, float]:
    """Per-group RK-weighted MAML-TRPO written plainly: stage ``i`` weights ``D_i = diag(a_i^l)`` written as
    ``w_i W_i`` (``w_i`` the largest-magnitude weight), ``J_D(theta) = w1 S0(theta_1) + w2 S1(theta'(theta_2))``
    with ``theta_i = theta_old + W_i (theta - theta_old)``, ``KL_D`` alike (docs/meta_rl.md)."""
    shapes = _names(pol)
    head = {k: k in ("w2", "b2", "log_std") for k, _ in shapes}
    d_1 = {k: (a_head if head[k] else a_body)[0] for k, _ in shapes}
    d_2 = {k: (a_head if head[k] else a_body)[1] for k, _ in shapes}
    w1 = max(d_1.values(), key=abs)
    w2 = max(d_2.values(), key=abs)
    big_w1 = _per_name({k: v / w1 for k, v in d_1.items()}, shapes)
    big_w2 = _per_name({k: v / w2 for k, v in d_2.items()}, shapes)
    alpha_vec = _per_name(alpha, shapes)

    def pi(vec: torch.Tensor, obs: torch.Tensor) -> Normal:
        p = _unpack(vec, shapes)
        h = torch.tanh(obs @ p["w0"].T + p["b0"])
        h = torch.tanh(h @ p["w1"].T + p["b1"])
        mean = h @ p["w2"].T + p["b2"]
        return Normal(mean, p["log_std"].exp().expand_as(mean))

    def mm(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return (x * m).sum() / m.sum()

    def inner(vec: torch.Tensor, t: int) -> torch.Tensor:
        loss = -mm(pi(vec, d0.obs[t]).log_prob(d0.actions[t]).sum(-1) * d0.advantages[t], d0.masks[t])
        (g,) = torch.autograd.grad(loss, vec, create_graph=True)
        return vec - alpha_vec * g

    old = torch.cat([v.detach().reshape(-1) for v in pol.params().values()])
    old_prime = [inner(old.clone().requires_grad_(True), t).detach() for t in range(T_)]

    def j_kl(vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        j = kl = torch.zeros((), dtype=D)
        v1 = old + big_w1 * (vec - old)
        v2 = old + big_w2 * (vec - old)
        for t in range(T_):
            lp = pi(v1, d0.obs[t]).log_prob(d0.actions[t]).sum(-1)
            lp_old = pi(old, d0.obs[t]).log_prob(d0.actions[t]).sum(-1)
            j = j + w1 * -mm(torch.exp(lp - lp_old) * d0.advantages[t], d0.masks[t])
            kl = kl + w1 * mm(kl_divergence(pi(old, d0.obs[t]), pi(v1, d0.obs[t])).sum(-1), d0.masks[t])
            vp = inner(v2, t)
            lp = pi(vp, d1.obs[t]).log_prob(d1.actions[t]).sum(-1)
            lp_old = pi(old_prime[t], d1.obs[t]).log_prob(d1.actions[t]).sum(-1)
            j = j + w2 * -mm(torch.exp(lp - lp_old) * d1.advantages[t], d1.masks[t])
            kl = kl + w2 * mm(kl_divergence(pi(old_prime[t], d1.obs[t]), pi(vp, d1.obs[t])).sum(-1), d1.masks[t])
        return j / T_, kl / T_

    return textbook_trpo_step(old, j_kl, max_kl, damping)


@pytest.mark.parametrize("fvp_mode", ["gauss_newton", "autograd"])
@pytest.mark.parametrize("adapt_first", [False, True])
def test_per_group_update_equals_plain_reference(fvp_mode: str, adapt_first: bool) -> None:
    pol = _policy()
    ref_pol = _policy()
    step = MetaTRPOStep(pol, {"w2|b2|log_std": "midpoint", "*": "ralston"}, inner_lr=0.3, fvp_mode=fvp_mode)
    assert isinstance(step.alpha, dict) and len(set(step.alpha.values())) == 2  # per-group step sizes
    d0, d1 = _batch(1), _batch(2)
    if adapt_first:  # as training does: adapt (sampling D1 with the result), then update at the same point
        step.adapt(pol.params(), [d0])
    stats = step.step(pol.params(), [d0], d1)
    got = torch.cat([v.detach().reshape(-1) for v in pol.params().values()])
    ralston, midpoint = get_tableau("ralston"), get_tableau("midpoint")
    assert midpoint.a == (0.0, 1.0)
    ref, improve = reference_update(ref_pol, d0, d1, tuple(ralston.a), tuple(midpoint.a), step.alpha)
    assert stats["accepted"] == 1.0 and improve > 0.0
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11)
    assert abs(stats["improvement"] - improve) < 1e-11


def test_adaptation_pass_not_reused_at_other_parameters() -> None:
    pol = _policy()
    step = MetaTRPOStep(pol, "ralston", inner_lr=0.3)
    d0, d1 = _batch(1), _batch(2)
    step.adapt(pol.params(), [d0])
    with torch.no_grad():  # the parameters change after the adaptation: the remembered pass is stale
        for v in pol.params().values():
            v.add_(0.01)
    ref_pol = _policy()
    with torch.no_grad():
        for v in ref_pol.params().values():
            v.add_(0.01)
    ref_step = MetaTRPOStep(ref_pol, "ralston", inner_lr=0.3)
    st = step.step(pol.params(), [d0], d1)
    st_ref = ref_step.step(ref_pol.params(), [d0], d1)
    assert st == st_ref
    for k, v in pol.params().items():
        assert torch.equal(v, ref_pol.params()[k])
    # a different D0 (a new object with the same values is a different batch) is not reused either
    step.adapt(pol.params(), [d0])
    prep = step.prepare(pol.params(), [_batch(1)], d1)
    ref_prep = ref_step.prepare(ref_pol.params(), [_batch(1)], d1)
    assert torch.equal(prep.grad, ref_prep.grad)


def test_retain_freed_memory_applies_on_glibc() -> None:
    import ctypes.util
    import platform

    from rkmeta_rl.common.allocator import retain_freed_memory

    applied = retain_freed_memory()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and ctypes.util.find_library("c"):
        assert applied
    else:
        assert not applied
    x = torch.randn(1 << 20)  # allocation still works, values intact
    assert torch.equal(x.clone(), x)
