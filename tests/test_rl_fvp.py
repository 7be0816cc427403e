"""The Gauss-Newton Fisher-vector product (rkmeta_rl.rl.fisher) against the autograd reference (float64, tiny).

``fvp_mode="gauss_newton"`` computes ``a1 F0 + a2 mean_T J^T F1 J`` from the structure of the KL's Hessian at
``theta_old``; ``fvp_mode="autograd"`` differentiates ``grad(KL, create_graph=True)`` through the inner step. They
must agree to rounding for every method, activation, inner-step count and subsample stride, and both must equal
central finite differences of the KL gradient.
"""

from __future__ import annotations

import pytest
import torch

from rkmeta_rl.rl import FlatBatch, GaussianMLPPolicy, MetaTRPOStep
from rkmeta_rl.rl.trpo import flatten, unflatten

D = torch.float64
T_, N_, OBS, ACT = 3, 12, 2, 2


def make_batch(seed: int, tasks: int = T_, steps: int = N_, obs: int = OBS, act: int = ACT) -> FlatBatch:
    """A float64 ``[tasks, steps]`` batch with random observations, actions and advantages, and two tasks whose
    episodes end early (masked steps), shared by the RL update tests."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.ones(tasks, steps, dtype=D)
    masks[0, 9:] = 0.0
    masks[2, 5:] = 0.0
    adv = torch.randn(tasks, steps, generator=g, dtype=D) * masks
    return FlatBatch(obs=torch.randn(tasks, steps, obs, generator=g, dtype=D),
                     actions=torch.randn(tasks, steps, act, generator=g, dtype=D), advantages=adv, masks=masks)


def _batch(seed: int) -> FlatBatch:
    return make_batch(seed)


def _policy(activation: str) -> GaussianMLPPolicy:
    return GaussianMLPPolicy(OBS, ACT, (5, 4), activation, init_log_std=-0.2, dtype=D,
                             generator=torch.Generator().manual_seed(3))


MIXED = "w2|b2|log_std=midpoint,w1|b1=heun,*=ralston"
CASES = [
    ("midpoint", {}),
    ("ralston", {}),
    ("heun", {}),
    ("euler", {}),
    ("midpoint", {"first_order": True}),
    ("ralston", {"first_order": True}),
    ("midpoint", {"inner_steps": 2}),
    ("heun", {"inner_steps": 2}),
    ("midpoint", {"fvp_subsample": 0.5}),
    ("ralston", {"fvp_subsample": 0.5}),
    ("heun", {"inner_steps": 2, "fvp_subsample": 0.5}),
    ("euler", {"fvp_subsample": 0.5}),
    # per-parameter methods (rkmeta_rl.rl.stage_weights): head midpoint, body ralston / euler; ANIL
    (MIXED, {}),
    (MIXED, {"inner_steps": 2}),
    (MIXED, {"first_order": True}),
    (MIXED, {"fvp_subsample": 0.5, "adapt": "w2|b2|log_std|w0"}),
    ("w2|b2|log_std=midpoint,*=euler", {}),
    ("heun", {"adapt": "w2|b2|log_std", "inner_steps": 2}),
]


def _setup(activation: str, method: str, kw: dict, mode: str):
    pol = _policy(activation)
    steps = kw.get("inner_steps", 1)
    train = [_batch(1), _batch(4)][:steps]
    d1 = _batch(2)
    step = MetaTRPOStep(pol, method, inner_lr=0.3, cg_damping=0.0, fvp_mode=mode, **kw)
    valid = d1 if step.adapts else None
    return pol, step, train, valid, step.prepare(pol.params(), train, valid)


def _vec(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("method,kw", CASES)
def test_gauss_newton_fvp_equals_autograd(activation: str, method: str, kw: dict) -> None:
    *_, ref = _setup(activation, method, kw, "autograd")
    *_, gn = _setup(activation, method, kw, "gauss_newton")
    # the gradient (hand-written J^T through the inner steps) and the old quantities agree to rounding
    assert float((gn.grad - ref.grad).norm() / ref.grad.norm()) < 1e-12
    assert gn.loss == pytest.approx(ref.loss, rel=1e-12, abs=1e-14)
    for name in ("logp0", "mu0", "ls0", "logp1", "mu1", "ls1"):
        x, y = getattr(ref.old, name), getattr(gn.old, name)
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(y.expand_as(x), x, rtol=1e-12, atol=1e-13)
    assert len(gn.old.adapted) == len(ref.old.adapted)
    for pa, pb in zip(ref.old.adapted, gn.old.adapted):
        for k in pa:
            torch.testing.assert_close(pb[k], pa[k], rtol=1e-12, atol=1e-13)
    for seed in range(3):
        v = _vec(ref.theta.numel(), seed)
        a, b = ref.fvp(v), gn.fvp(v)
        assert float((a - b).norm() / a.norm()) < 1e-10


def _kl_grad(step: MetaTRPOStep, theta_vec: torch.Tensor, like: dict, train, valid, old) -> torch.Tensor:
    theta = {k: v.clone().requires_grad_(True) for k, v in unflatten(theta_vec, like).items()}
    if step.fvp_stride == 1:
        _, kl, _ = step.objective(theta, train, valid, old, create_graph=True)
    else:
        kl = step.subsampled_kl(theta, train, valid, old, step.fvp_stride)
    return flatten(torch.autograd.grad(kl, list(theta.values())))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("method,kw", [("midpoint", {}), ("heun", {"inner_steps": 2}),
                                       ("ralston", {"fvp_subsample": 0.5}), ("euler", {})])
def test_gauss_newton_fvp_equals_finite_differences(activation: str, method: str, kw: dict) -> None:
    """(Not with first_order: its KL treats the inner gradient as a constant, which finite differences do not.)"""
    pol, step, train, valid, prep = _setup(activation, method, kw, "gauss_newton")
    like = {k: v.detach() for k, v in pol.params().items()}
    v = _vec(prep.theta.numel(), 7)
    eps = 2e-6
    fd = (_kl_grad(step, prep.theta + eps * v, like, train, valid, prep.old)
          - _kl_grad(step, prep.theta - eps * v, like, train, valid, prep.old)) / (2 * eps)
    torch.testing.assert_close(prep.fvp(v), fd, rtol=1e-6, atol=1e-8)
    *_, ref = _setup(activation, method, kw, "autograd")
    torch.testing.assert_close(ref.fvp(v), fd, rtol=1e-6, atol=1e-8)


def test_fvp_damping_and_mode_validation() -> None:
    pol = _policy("tanh")
    d0, d1 = _batch(1), _batch(2)
    plain = MetaTRPOStep(pol, "midpoint", inner_lr=0.3, cg_damping=0.0).prepare(pol.params(), [d0], d1)
    damped = MetaTRPOStep(pol, "midpoint", inner_lr=0.3, cg_damping=0.1).prepare(pol.params(), [d0], d1)
    v = _vec(plain.theta.numel())
    torch.testing.assert_close(damped.fvp(v), plain.fvp(v) + 0.1 * v, rtol=1e-12, atol=1e-14)
    assert MetaTRPOStep(pol, "midpoint").fvp_mode == "gauss_newton"
    with pytest.raises(ValueError):
        MetaTRPOStep(pol, "midpoint", fvp_mode="exact")


@pytest.mark.parametrize("method", ["midpoint", "heun"])
def test_trpo_step_same_in_both_modes(method: str) -> None:
    """The whole meta-update (CG, step scaling, line search) agrees to rounding (amplified by CG's 1e-5 damping)."""
    out = []
    for mode in ("autograd", "gauss_newton"):
        pol = _policy("tanh")
        step = MetaTRPOStep(pol, method, inner_lr=0.3, fvp_mode=mode)
        stats = step.step(pol.params(), [_batch(1)], _batch(2))
        out.append((flatten({k: v.detach() for k, v in pol.params().items()}), stats))
    (pa, sa), (pb, sb) = out
    torch.testing.assert_close(pb, pa, rtol=1e-7, atol=1e-9)
    assert sa["accepted"] == sb["accepted"] and sa["ls_steps"] == sb["ls_steps"]


@pytest.mark.parametrize("method,kw", [("heun", {"inner_steps": 2}), ("ralston", {"fvp_subsample": 0.5}),
                                       ("euler", {})])
def test_fvp_task_chunks_do_not_matter(method: str, kw: dict) -> None:
    from rkmeta_rl.rl.fisher import GaussNewtonFVP

    _, step, train, valid, prep = _setup("tanh", method, kw, "gauss_newton")
    whole = step.gauss_newton_fvp(train, valid, prep.old, step.fvp_stride)
    assert len(whole.chunks) == 1
    one_each = GaussNewtonFVP(whole.like, whole.a1, whole.a2, whole.alpha, whole.d0, whole.inner, whole.d1,
                              chunk_rows=1)
    assert len(one_each.chunks) == T_
    v = _vec(prep.theta.numel(), 5)
    torch.testing.assert_close(one_each(v), whole(v), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(prep.fvp(v), whole(v), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("method,kw", [("ralston", {}), ("heun", {"inner_steps": 2}),
                                       ("ralston", {"fvp_subsample": 0.5})])
def test_shared_d0_product_equals_general_form(activation: str, method: str, kw: dict,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast form (``a1 F0`` sharing the first inner step's Jacobian-vector product and backward pass) against
    the general one (``a1 F0`` and ``J^T F1 J`` each on its own), the same D0 cache held as two objects."""
    from rkmeta_rl.rl import fisher

    _, step, train, valid, prep = _setup(activation, method, kw, "gauss_newton")
    fast = step.gauss_newton_fvp(train, valid, prep.old, step.fvp_stride)
    assert fast.d0 is fast.inner[0] and fast.chunks[0][1] is fast.chunks[0][2][0]
    plain = fisher.GaussNewtonFVP(fast.like, fast.a1, fast.a2, fast.alpha, fast.d0.chunk(slice(None)),
                                  fast.inner, fast.d1)
    calls = {"shared": 0}
    shared = fisher.GaussNewtonFVP._chunk_shared_d0

    def counting(*args, **kwargs):
        calls["shared"] += 1
        return shared(*args, **kwargs)

    monkeypatch.setattr(fisher.GaussNewtonFVP, "_chunk_shared_d0", counting)
    for seed in range(3):
        v = _vec(prep.theta.numel(), seed)
        torch.testing.assert_close(fast(v), plain(v), rtol=1e-12, atol=1e-14)
    assert calls["shared"] == 3 * len(fast.chunks)  # the fast form ran, the plain one never
