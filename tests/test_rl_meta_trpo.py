"""RK-weighted MAML-TRPO against hand-written references (float64, tiny problems).

* ``midpoint`` equals a plainly written MAML-TRPO (per-task loop, flat parameter vector, autograd HVP, textbook
  CG and line search);
* ``euler`` equals plain TRPO on the pre-adaptation policy;
* ``heun`` weights the two stages as docs/meta_rl.md says;
* the Fisher-vector product (through the inner step) equals central finite differences of the KL gradient.
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from test_rl_fvp import make_batch
from torch.distributions import Normal, kl_divergence

from rkmeta_rl.rl import FlatBatch, GaussianMLPPolicy, MetaTRPOStep

D = torch.float64
T_, N_, OBS, ACT, HID = 3, 12, 2, 2, 5


def _batch(seed: int) -> FlatBatch:
    return make_batch(seed, T_, N_, OBS, ACT)


def _policy() -> GaussianMLPPolicy:
    return GaussianMLPPolicy(OBS, ACT, (HID,), "tanh", init_log_std=-0.2, dtype=D,
                             generator=torch.Generator().manual_seed(3))


# ---------------------------------------------------------------------------------------------------------
# the hand-written reference: flat parameter vector, one task at a time
# ---------------------------------------------------------------------------------------------------------
SHAPES = [("w0", (HID, OBS)), ("b0", (HID,)), ("w1", (ACT, HID)), ("b1", (ACT,)), ("log_std", (ACT,))]


def unpack(vec: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, shape in SHAPES:
        n = math.prod(shape)
        out[name] = vec[i:i + n].reshape(shape)
        i += n
    return out


def pi(vec: torch.Tensor, obs: torch.Tensor) -> Normal:
    p = unpack(vec)
    mean = torch.tanh(obs @ p["w0"].T + p["b0"]) @ p["w1"].T + p["b1"]
    return Normal(mean, p["log_std"].exp().expand_as(mean))


def masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / m.sum()


def inner_step(vec: torch.Tensor, d: FlatBatch, t: int, alpha: float) -> torch.Tensor:
    loss = -masked_mean(pi(vec, d.obs[t]).log_prob(d.actions[t]).sum(-1) * d.advantages[t], d.masks[t])
    (g,) = torch.autograd.grad(loss, vec, create_graph=True)
    return vec - alpha * g


def reference_trpo(vec0: torch.Tensor, d0: FlatBatch, d1: FlatBatch | None, a1: float, a2: float, alpha: float,
                   max_kl: float = 0.01, damping: float = 1e-5) -> tuple[torch.Tensor, float]:
    old = vec0.detach()
    old_prime = [inner_step(old.clone().requires_grad_(True), d0, t, alpha).detach() for t in range(T_)] \
        if a2 else []

    def j_and_kl(vec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        j = kl = torch.zeros((), dtype=D)
        for t in range(T_):
            if a1:
                ratio = torch.exp(pi(vec, d0.obs[t]).log_prob(d0.actions[t]).sum(-1)
                                  - pi(old, d0.obs[t]).log_prob(d0.actions[t]).sum(-1))
                j = j + a1 * -masked_mean(ratio * d0.advantages[t], d0.masks[t])
                kl = kl + a1 * masked_mean(kl_divergence(pi(old, d0.obs[t]), pi(vec, d0.obs[t])).sum(-1),
                                           d0.masks[t])
            if a2:
                assert d1 is not None
                vp = inner_step(vec, d0, t, alpha)
                ratio = torch.exp(pi(vp, d1.obs[t]).log_prob(d1.actions[t]).sum(-1)
                                  - pi(old_prime[t], d1.obs[t]).log_prob(d1.actions[t]).sum(-1))
                j = j + a2 * -masked_mean(ratio * d1.advantages[t], d1.masks[t])
                kl = kl + a2 * masked_mean(kl_divergence(pi(old_prime[t], d1.obs[t]), pi(vp, d1.obs[t])).sum(-1),
                                           d1.masks[t])
        return j / T_, kl / T_

    return textbook_trpo_step(old, j_and_kl, max_kl, damping)


def textbook_trpo_step(old: torch.Tensor, j_and_kl: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                       max_kl: float, damping: float) -> tuple[torch.Tensor, float]:
    """One TRPO step on the flat parameters ``old`` of ``(objective, KL) = j_and_kl(theta)``, written out plainly:
    the gradient and the Fisher-vector product by double backward through the KL's gradient, textbook conjugate
    gradient from x = 0 (10 iterations, stop when r.r < 1e-10), the step scaled to ``0.5 x^T F x = max_kl`` and
    a backtracking line search (0.8^k, 15 tries) accepting a lower objective within the KL bound.

    Returns ``(new parameters, objective improvement)``; ``(old, 0.0)`` when no try is accepted."""
    theta = old.clone().requires_grad_(True)
    j, kl = j_and_kl(theta)
    (g,) = torch.autograd.grad(j, theta, retain_graph=True)
    (gkl,) = torch.autograd.grad(kl, theta, create_graph=True)

    def fvp(v: torch.Tensor) -> torch.Tensor:
        (hv,) = torch.autograd.grad(gkl @ v, theta, retain_graph=True)
        return hv + damping * v

    x = torch.zeros_like(g)
    r = g.clone()
    p = g.clone()
    for _ in range(10):
        if r @ r < 1e-10:
            break
        ap = fvp(p)
        a = (r @ r) / (p @ ap)
        x = x + a * p
        r_new = r - a * ap
        p = r_new + (r_new @ r_new) / (r @ r) * p
        r = r_new
    step = x * torch.sqrt(max_kl / (0.5 * x @ fvp(x)))
    for k in range(15):
        cand = (old - 0.8 ** k * step).requires_grad_(True)
        j_new, kl_new = j_and_kl(cand)
        if j_new.item() < j.item() and kl_new.item() <= max_kl * (1 + 1e-9):
            return cand.detach(), j.item() - j_new.item()
    return old, 0.0


def _run(method: str, alpha_maml: float = 0.3) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    pol = _policy()
    vec0 = torch.cat([pol.params()[n].detach().reshape(-1) for n, _ in SHAPES])
    d0, d1 = _batch(1), _batch(2)
    step = MetaTRPOStep(pol, method, inner_lr=alpha_maml)
    stats = step.step(pol.params(), [d0], d1 if step.adapts else None)
    got = torch.cat([pol.params()[n].detach().reshape(-1) for n, _ in SHAPES])
    tab = step.tableau
    a1, a2 = tab.a[0], (tab.a[1] if tab.stages == 2 else 0.0)
    ref, ref_improve = reference_trpo(vec0, d0, d1 if a2 else None, a1, a2, step.alpha)
    assert abs(stats["improvement"] - ref_improve) < 1e-10
    return got, ref, stats


@pytest.mark.parametrize("method", ["midpoint", "euler", "heun"])
def test_meta_trpo_equals_hand_written(method: str) -> None:
    got, ref, stats = _run(method)
    assert stats["accepted"] == 1.0
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11)


def test_midpoint_adapts_with_maml_lr_and_euler_does_not_adapt() -> None:
    pol = _policy()
    assert MetaTRPOStep(pol, "midpoint", inner_lr=0.3).alpha == pytest.approx(0.3)
    assert MetaTRPOStep(pol, "ralston", inner_lr=0.3).alpha == pytest.approx(2 * 0.75 * 0.3)
    e = MetaTRPOStep(pol, "euler", inner_lr=0.3)
    assert not e.adapts and e.a1 == 1.0 and e.a2 == 0.0
    with pytest.raises(ValueError):
        MetaTRPOStep(pol, "rk4")


def _kl_grad(step: MetaTRPOStep, theta_vec: torch.Tensor, like: dict, d0: FlatBatch, d1: FlatBatch, old,
             stride: int) -> torch.Tensor:
    from rkmeta_rl.rl.trpo import flatten, unflatten

    theta = {k: v.clone().requires_grad_(True) for k, v in unflatten(theta_vec, like).items()}
    if stride == 1:
        _, kl, _ = step.objective(theta, [d0], d1, old, create_graph=True)
    else:
        kl = step.subsampled_kl(theta, [d0], d1, old, stride)
    return flatten(torch.autograd.grad(kl, list(theta.values())))


@pytest.mark.parametrize("method,stride", [("midpoint", 1), ("ralston", 1), ("ralston", 2)])
def test_fvp_equals_finite_differences_through_inner_step(method: str, stride: int) -> None:
    pol = _policy()
    d0, d1 = _batch(1), _batch(2)
    step = MetaTRPOStep(pol, method, inner_lr=0.3, cg_damping=0.0, fvp_subsample=1.0 / stride)
    prep = step.prepare(pol.params(), [d0], d1)
    v = torch.randn_like(prep.theta, generator=None)
    like = {k: v_.detach() for k, v_ in pol.params().items()}
    eps = 1e-5
    fd = (_kl_grad(step, prep.theta + eps * v, like, d0, d1, prep.old, stride)
          - _kl_grad(step, prep.theta - eps * v, like, d0, d1, prep.old, stride)) / (2 * eps)
    fvp = prep.fvp(v)
    torch.testing.assert_close(fvp, fd, rtol=1e-6, atol=1e-8)
    # the inner step matters: the Jacobian-free Fisher (first order) differs
    fo = MetaTRPOStep(pol, method, inner_lr=0.3, cg_damping=0.0, first_order=True).prepare(pol.params(), [d0], d1)
    assert (fo.fvp(v) - fvp).abs().max() > 1e-4


def test_subsampled_kl_stride_one_equals_exact_fvp() -> None:
    pol = _policy()
    d0, d1 = _batch(1), _batch(2)
    step = MetaTRPOStep(pol, "heun", inner_lr=0.3, cg_damping=0.0)
    prep = step.prepare(pol.params(), [d0], d1)
    v = torch.randn_like(prep.theta)
    like = {k: v_.detach() for k, v_ in pol.params().items()}
    from rkmeta_rl.rl.trpo import flatten, unflatten

    theta = {k: t.clone().requires_grad_(True) for k, t in unflatten(prep.theta, like).items()}
    kl = step.subsampled_kl(theta, [d0], d1, prep.old, 1)
    gk = flatten(torch.autograd.grad(kl, list(theta.values()), create_graph=True))
    hv = flatten(torch.autograd.grad(gk @ v, list(theta.values())))
    torch.testing.assert_close(hv, prep.fvp(v), rtol=1e-10, atol=1e-12)


def test_two_inner_steps_gradient_matches_loop() -> None:
    """With two inner steps J chains two adaptations, the second on its own batch."""
    pol = _policy()
    d0a, d0b, d1 = _batch(1), _batch(4), _batch(2)
    step = MetaTRPOStep(pol, "midpoint", inner_lr=0.3, inner_steps=2)
    prep = step.prepare(pol.params(), [d0a, d0b], d1)
    vec = torch.cat([pol.params()[n].detach().reshape(-1) for n, _ in SHAPES]).requires_grad_(True)
    old1 = [inner_step(inner_step(vec, d0a, t, 0.3), d0b, t, 0.3).detach() for t in range(T_)]
    j = torch.zeros((), dtype=D)
    for t in range(T_):
        vp = inner_step(inner_step(vec, d0a, t, 0.3), d0b, t, 0.3)
        ratio = torch.exp(pi(vp, d1.obs[t]).log_prob(d1.actions[t]).sum(-1)
                          - pi(old1[t], d1.obs[t]).log_prob(d1.actions[t]).sum(-1))
        j = j - masked_mean(ratio * d1.advantages[t], d1.masks[t]) / T_
    (g,) = torch.autograd.grad(j, vec)
    torch.testing.assert_close(prep.grad, g, rtol=1e-10, atol=1e-12)
