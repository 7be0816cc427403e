"""Per-parameter RK methods and ``adapt=`` (ANIL) against exact answers, on both engine paths (float64).

References are written independently of the engine on flat parameter vectors: per-coordinate step sizes
``A``, per-coordinate stage weights ``a1, a2``, explicit Hessians (``torch.autograd.functional.hessian``) for
the chain rule through the inner steps, ``d theta' / d theta = I - A H`` (its transpose ``I - H A``), and
central finite differences of each stage's objective (for mixed methods the per-group meta-gradient is not
the gradient of one scalar, so each stage ``k_i`` is checked and combined by hand).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import OMNIGLOT_ROOT, load_script
from test_meta_gradient import (
    NUMEL,
    SHAPES,
    central_fd,
    flat,
    grad_flat,
    hand_rk2,
    make_data,
    query_loss,
    support_loss,
    task,
    unflat,
)

from rkmeta_rl.checkpoint import latest_checkpoint, load_checkpoint
from rkmeta_rl.rk import (
    PerStage,
    adapt_and_score,
    get_tableau,
    meta_gradient,
    method_name,
    parse_method_spec,
    resolve_groups,
    step_sizes,
)
from rkmeta_rl.rk.inner_step import inner_step
from rkmeta_rl.rl import MetaTRPO
from rkmeta_rl.supervised.trainer import MetaTrainer

DT = torch.float64
PATHS = ["vmap", "loop"]
HEAD = "[wb]2"  # the output layer of the test MLP (w0, b0, w1, b1, w2, b2)
MIXED = {HEAD: "midpoint", "[wb]1": "heun", "*": "ralston"}


@pytest.fixture(scope="module")
def theta() -> torch.Tensor:
    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(1), dtype=DT) * 0.7


def per_coord(values: dict[str, float]) -> torch.Tensor:
    """A flat vector holding ``values[name]`` on every coordinate of parameter ``name``."""
    return flat({k: torch.full(s, float(values[k]), dtype=DT) for k, s in SHAPES.items()})


def hand_groups(method, adapt=None, inner_lr=0.05, step_rule="tableau"):
    """(A, a1, a2) per coordinate, from the issue's rules written out directly."""
    groups = resolve_groups(list(SHAPES), method, adapt)
    two = any(t.stages == 2 for t in groups.tableaus)
    alpha, a1, a2 = {}, {}, {}
    for n, t, ad in zip(groups.names, groups.tableaus, groups.adapted):
        q21 = t.q[1][0] if t.stages == 2 else 0.0
        rate = (2 * q21 * inner_lr if step_rule == "tableau" else (inner_lr if q21 else 0.0))
        alpha[n] = rate if ad and (t.stages == 2 or not two) else 0.0
        if t.stages == 1 and not two and ad:
            alpha[n] = inner_lr
        a1[n], a2[n] = (t.a[0], t.a[1]) if t.stages == 2 else (1.0, 0.0)
    return per_coord(alpha), per_coord(a1), per_coord(a2)


def engine(theta_v, data, method, inner_lr, path, **kw):
    g, stats = meta_gradient(unflat(theta_v.clone()), support_loss, query_loss, data, method, inner_lr,
                             path=path, **kw)
    return flat(g), stats


# ---------------------------------------------------------------------------------------------- uniform == today


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method,steps", [("midpoint", 1), ("ralston", 2), ("euler", 1), ("generic(0.8)", 1)])
def test_one_method_everywhere_is_the_uniform_method_bit_for_bit(theta, path, method, steps) -> None:
    data = make_data(3)
    ref, ref_stats = engine(theta, data, method, 0.05, path, inner_steps=steps)
    for spec in ({HEAD: method, "*": method}, f"w*={method},b*={method}"):
        got, stats = engine(theta, data, spec, 0.05, path, inner_steps=steps, adapt=["*"])
        assert torch.equal(got, ref)
        assert stats == ref_stats


@pytest.mark.parametrize("path", PATHS)
def test_one_four_stage_method_everywhere_is_uniform(theta, path) -> None:
    ps = PerStage([make_data(2, seed=30 + i) for i in range(4)])
    ref, _ = engine(theta, ps, "rk4", 0.1, path)
    got, _ = engine(theta, ps, {"w*": "rk4", "b*": "rk4"}, 0.1, path)
    assert torch.equal(got, ref)


# ---------------------------------------------------------------------------------------------- ANIL


def hand_anil(theta_v, data, alpha):
    """ANIL (Raghu et al., 2019): the inner step moves only the head; g = (I - alpha H M) gQ(theta')."""
    head = per_coord({k: 1.0 if k in ("w2", "b2") else 0.0 for k in SHAPES}).bool()
    total = torch.zeros_like(theta_v)
    for t in range(data["xs"].shape[0]):
        d = task(data, t)
        ls = lambda v, d=d: support_loss(unflat(v), d)  # noqa: E731
        g_s = grad_flat(ls, theta_v)
        post = theta_v.clone()
        post[head] = theta_v[head] - alpha * g_s[head]
        g_q = grad_flat(lambda v, d=d: query_loss(unflat(v), d), post)
        H = torch.autograd.functional.hessian(ls, theta_v)
        total += g_q - alpha * H[:, head] @ g_q[head]
    return total / data["xs"].shape[0]


@pytest.mark.parametrize("path", PATHS)
def test_anil_equals_hand_written(theta, path) -> None:
    data = make_data(3)
    got, stats = engine(theta, data, "midpoint", 0.1, path, adapt=HEAD)
    torch.testing.assert_close(got, hand_anil(theta, data, 0.1), rtol=1e-10, atol=1e-12)
    # the post-adaptation diagnostics adapted the head only
    d0 = task(data, 0)
    _, s1 = engine(theta, {k: v[:1] for k, v in data.items()}, "midpoint", 0.1, path, adapt=HEAD)
    g = grad_flat(lambda v: support_loss(unflat(v), d0), theta)
    post = theta - 0.1 * per_coord({k: float(k in ("w2", "b2")) for k in SHAPES}) * g
    assert s1["query_loss_post"] == pytest.approx(float(query_loss(unflat(post), d0)), rel=1e-12)
    assert stats["num_tasks"] == 3.0


# ---------------------------------------------------------------------------------------------- mixed mappings


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method,adapt,steps,rule", [
    (MIXED, None, 1, "tableau"),
    (MIXED, None, 1, "fixed"),
    (MIXED, "[wb]2|w1", 1, "tableau"),
    (MIXED, None, 3, "tableau"),
    ("[wb]2=midpoint,*=euler", None, 1, "tableau"),
    ("[wb]2=midpoint,[wb]1=itb,*=euler", ["w2", "b*"], 2, "tableau"),
])
def test_mixed_mapping_equals_hand_computed(theta, path, method, adapt, steps, rule) -> None:
    data = make_data(3)
    A, a1, a2 = hand_groups(method, adapt, 0.05, rule)
    ref = hand_rk2(theta, data, a1, a2, A, steps)
    got, _ = engine(theta, data, method, 0.05, path, adapt=adapt, inner_steps=steps, step_rule=rule)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_mixed_first_order(theta, path) -> None:
    data = make_data(3)
    A, a1, a2 = hand_groups(MIXED)
    ref = hand_rk2(theta, data, a1, a2, A, 2, first_order=True)
    got, _ = engine(theta, data, MIXED, 0.05, path, inner_steps=2, first_order=True)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("adapt", [None, "w2|b2|w0"])
def test_mixed_mapping_matches_finite_differences_of_each_stage(theta, path, adapt) -> None:
    """k1 = FD of L_S, k2 = FD of L_Q(theta'(theta)) (theta' with per-group steps), combined per group by hand."""
    data = make_data(2, seed=3)
    A, a1, a2 = hand_groups(MIXED, adapt, 0.1)
    coords = list(range(0, NUMEL, 4))
    k1 = torch.zeros(len(coords), dtype=DT)
    k2 = torch.zeros(len(coords), dtype=DT)
    for t in range(2):
        d = task(data, t)

        def stage2(v, d=d):
            return query_loss(unflat(v - A * grad_flat(lambda u: support_loss(unflat(u), d), v)), d).detach()

        k1 += central_fd(lambda v, d=d: support_loss(unflat(v), d).detach(), theta, coords) / 2
        k2 += central_fd(stage2, theta, coords) / 2
    got, _ = engine(theta, data, MIXED, 0.1, path, adapt=adapt)
    torch.testing.assert_close(got[coords], a1[coords] * k1 + a2[coords] * k2, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("path", PATHS)
def test_three_stage_tableau_with_adapt_matches_finite_differences(theta, path) -> None:
    """One kutta3 everywhere, only the head adapted: stage points theta_i = theta - h M sum_j q_ij k_j."""
    tab = get_tableau("kutta3")
    h = tab.step_size(0.1)
    M = per_coord({k: float(k in ("w2", "b2")) for k in SHAPES})
    stage_data = [make_data(2, seed=40 + i) for i in range(3)]

    def J(theta_v):
        total = torch.zeros((), dtype=DT)
        for t in range(2):
            ds = [task(d, t) for d in stage_data]
            v = theta_v.detach().requires_grad_(True)
            ks = [torch.autograd.grad(support_loss(unflat(v), ds[0]), v, create_graph=True)[0]]
            val = tab.a[0] * support_loss(unflat(v), ds[0])
            for i in range(2, 4):
                pt = v - h * M * sum(tab.q[i - 1][j] * ks[j] for j in range(i - 1))
                li = query_loss(unflat(pt), ds[i - 1])
                ks.append(torch.autograd.grad(li, v, create_graph=True)[0])
                val = val + tab.a[i - 1] * li
            total = total + val.detach()
        return total / 2

    got, _ = engine(theta, PerStage(stage_data), "kutta3", 0.1, path, adapt=HEAD)
    coords = list(range(0, NUMEL, 5))
    torch.testing.assert_close(got[coords], central_fd(J, theta, coords), rtol=1e-6, atol=1e-8)


def test_paths_agree_on_a_mixed_mapping(theta) -> None:
    data = make_data(4, seed=5)
    for kw in ({}, {"adapt": "w2|b2|w1", "inner_steps": 2}, {"first_order": True}):
        gv, sv = engine(theta, data, MIXED, 0.05, "vmap", **kw)
        gl, sl = engine(theta, data, MIXED, 0.05, "loop", **kw)
        torch.testing.assert_close(gv, gl, rtol=1e-12, atol=1e-13)
        for k in sv:
            assert sv[k] == pytest.approx(sl[k], rel=1e-12)


@pytest.mark.slow  # about a minute of torch.compile on a loaded 2-core CPU
def test_compiled_mixed_mapping_equals_eager() -> None:
    torch.manual_seed(0)
    p = {k: torch.randn(s) * 0.5 for k, s in SHAPES.items()}
    data = {k: v.float() for k, v in make_data(5).items()}
    ge, _ = meta_gradient(p, support_loss, query_loss, data, MIXED, 0.05, path="vmap", adapt="w2|b2|w1")
    gc, _ = meta_gradient(p, support_loss, query_loss, data, MIXED, 0.05, path="vmap", adapt="w2|b2|w1",
                          compile=True)
    for k in p:
        torch.testing.assert_close(gc[k], ge[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- step sizes, test time


def test_step_sizes_rules() -> None:
    names = list(SHAPES)
    s = step_sizes(names, MIXED, 0.1)
    assert s == {"w2": 0.1, "b2": 0.1, "w1": 0.2, "b1": 0.2, "w0": 2 * 0.75 * 0.1, "b0": 2 * 0.75 * 0.1}
    assert set(step_sizes(names, MIXED, 0.1, step_rule="fixed").values()) == {0.1}
    assert step_sizes(names, "midpoint", 0.1, adapt=HEAD) == {k: (0.1 if k in ("w2", "b2") else 0.0) for k in names}
    # euler next to a two-stage method adapts nothing; euler alone is the pretrained baseline (MAML's rate)
    assert step_sizes(names, f"{HEAD}=midpoint,*=euler", 0.1) == {k: (0.1 if k in ("w2", "b2") else 0.0)
                                                                  for k in names}
    assert step_sizes(names, "euler", 0.1) == {k: 0.1 for k in names}
    # uniform: exactly the tableau's own inner rate
    for m in ("midpoint", "ralston", "itb", "generic(0.3)"):
        assert set(step_sizes(names, m, 0.07).values()) == {get_tableau(m).inner_lr(0.07)}


@pytest.mark.parametrize("path", PATHS)
def test_adapt_and_score_with_per_parameter_rates(theta, path) -> None:
    data = make_data(2)
    rates = step_sizes(list(SHAPES), MIXED, 0.05, adapt="w2|b2|w0")
    A = per_coord(rates)
    out = adapt_and_score(unflat(theta), support_loss, lambda p, d: {"mse": query_loss(p, d)}, data, rates, 2,
                          path=path)
    for t in range(2):
        d = task(data, t)
        v = theta.clone()
        for s in range(3):
            assert float(out["mse"][t, s]) == pytest.approx(float(query_loss(unflat(v), d)), rel=1e-12)
            v = v - A * grad_flat(lambda u, d=d: support_loss(unflat(u), d), v)


def test_inner_step_primitive() -> None:
    p = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}
    g = {"a": torch.tensor([0.5, -1.0]), "b": torch.tensor([2.0])}
    out = inner_step(p, g, {"a": 0.1, "b": 0.0})
    assert torch.equal(out["a"], torch.tensor([1.0 - 0.05, 2.0 + 0.1])) and out["b"] is p["b"]
    assert torch.equal(inner_step(p, list(g.values()), 0.5)["b"], torch.tensor([2.0]))
    with pytest.raises(ValueError, match="no step size.*'b'"):
        inner_step(p, g, {"a": 0.1})


# ---------------------------------------------------------------------------------------------- specs and errors


def test_method_spec_parsing_and_names() -> None:
    m = parse_method_spec(" head.*=midpoint , *=ralston ")
    assert m.name == "head.*=midpoint,*=ralston" and parse_method_spec(m.name) == m
    assert method_name({"head.*": "maml", "*": 0.6}) == "head.*=midpoint,*=generic(0.6)"
    assert parse_method_spec("ralston") is get_tableau("ralston")
    assert parse_method_spec({"*": "heun"}) is get_tableau("heun")
    assert method_name("generic(0.6)") == "generic(0.6)"


def test_bad_mappings_give_clear_errors(theta) -> None:
    p, data = unflat(theta.clone()), make_data(2)

    def mg(method, **kw):
        return meta_gradient(p, support_loss, query_loss, data, method, 0.1, **kw)

    with pytest.raises(ValueError, match=r"no pattern matches parameter\(s\) \['w0', 'b0', 'w1', 'b1'\]"):
        mg({HEAD: "midpoint"})
    with pytest.raises(ValueError, match="pattern 'w\\*'.*unknown RK method 'midpiont'"):
        mg({"w*": "midpiont", "*": "ralston"})
    with pytest.raises(ValueError, match="pattern 'b\\*'.*unknown RK method"):
        mg("w*=midpoint,b*=nope")
    with pytest.raises(ValueError, match="'pattern=method'"):
        mg("w*=midpoint,ralston")
    with pytest.raises(ValueError, match="mapping is empty"):
        mg({})
    with pytest.raises(ValueError, match=r"first match of no parameter"):
        mg({"*": "midpoint", HEAD: "ralston"})
    with pytest.raises(ValueError, match="adapt must name at least one"):
        mg("midpoint", adapt=[])
    with pytest.raises(ValueError, match="adapt must name at least one"):
        mg("midpoint", adapt="")
    with pytest.raises(ValueError, match=r"adapt='head\.\*' matches no parameter"):
        mg("midpoint", adapt="head.*")
    with pytest.raises(ValueError, match=r"adapt: pattern\(s\) \['haed'\] match no parameter"):
        mg("midpoint", adapt=["w2", "haed"])
    with pytest.raises(ValueError, match="same tableau for every parameter"):
        meta_gradient(p, support_loss, query_loss, PerStage([data] * 4), {HEAD: "rk4", "*": "midpoint"}, 0.1)
    with pytest.raises(ValueError, match="parameter 'steps' must be a floating-point tensor"):
        meta_gradient({**p, "steps": torch.tensor([3])}, support_loss, query_loss, data, "midpoint", 0.1)


# ---------------------------------------------------------------------------------------------- MAML-TRPO per group

from test_rl_meta_trpo import SHAPES as RL_SHAPES  # noqa: E402
from test_rl_meta_trpo import T_, _batch, _policy, masked_mean, pi  # noqa: E402
from torch.distributions import kl_divergence  # noqa: E402

from rkmeta_rl.rl import MetaTRPOStep  # noqa: E402

RL_HEAD = "w1|b1|log_std"  # the one-hidden-layer test policy's head
RL_CASES = [
    ({RL_HEAD: "midpoint", "*": "ralston"}, {}),
    (f"{RL_HEAD}=midpoint,*=euler", {}),
    ({RL_HEAD: "itb", "*": "heun"}, {"adapt": "w1|b1|w0"}),
    ("midpoint", {"adapt": RL_HEAD}),
    ({RL_HEAD: "midpoint", "*": "ralston"}, {"inner_steps": 2}),
]


def rl_coords(values: dict[str, float]) -> torch.Tensor:
    return torch.cat([torch.full(shape, float(values[n]), dtype=DT).reshape(-1) for n, shape in RL_SHAPES])


def rl_vec(pol) -> torch.Tensor:
    return torch.cat([pol.params()[n].detach().reshape(-1) for n, _ in RL_SHAPES])


def rl_inner(vec, d, t, A):
    """The hand-written REINFORCE inner step with per-coordinate step sizes A."""
    loss = -masked_mean(pi(vec, d.obs[t]).log_prob(d.actions[t]).sum(-1) * d.advantages[t], d.masks[t])
    (g,) = torch.autograd.grad(loss, vec, create_graph=True)
    return vec - A * g


def rl_stage_functions(old, train, d1, A):
    """S0, S1 (surrogates) and KL0, KL1 (KL to the old policies) as functions of the flat parameters, per the
    uniform MAML-TRPO definitions; stage 2 goes through the per-group inner steps."""
    def adapted(vec, t):
        for d in train:
            vec = rl_inner(vec, d, t, A)
        return vec

    base = old.clone().requires_grad_(True)
    old_prime = [adapted(base, t).detach() for t in range(T_)]
    d0 = train[0]

    def s0(vec):
        return sum(-masked_mean(torch.exp(pi(vec, d0.obs[t]).log_prob(d0.actions[t]).sum(-1)
                                          - pi(old, d0.obs[t]).log_prob(d0.actions[t]).sum(-1)) * d0.advantages[t],
                                d0.masks[t]) for t in range(T_)) / T_

    def s1(vec):
        out = 0.0
        for t in range(T_):
            vp = adapted(vec, t)
            ratio = torch.exp(pi(vp, d1.obs[t]).log_prob(d1.actions[t]).sum(-1)
                              - pi(old_prime[t], d1.obs[t]).log_prob(d1.actions[t]).sum(-1))
            out = out - masked_mean(ratio * d1.advantages[t], d1.masks[t])
        return out / T_

    def kl0(vec):
        return sum(masked_mean(kl_divergence(pi(old, d0.obs[t]), pi(vec, d0.obs[t])).sum(-1), d0.masks[t])
                   for t in range(T_)) / T_

    def kl1(vec):
        return sum(masked_mean(kl_divergence(pi(old_prime[t], d1.obs[t]), pi(adapted(vec, t), d1.obs[t])).sum(-1),
                               d1.masks[t]) for t in range(T_)) / T_

    return s0, s1, kl0, kl1


def rl_setup(method, kw, mode="gauss_newton"):
    pol = _policy()
    steps = kw.get("inner_steps", 1)
    train = [_batch(1), _batch(4)][:steps]
    d1 = _batch(2)
    step = MetaTRPOStep(pol, method, inner_lr=0.3, cg_damping=0.0, fvp_mode=mode, **kw)
    prep = step.prepare(pol.params(), train, d1)
    return pol, step, train, d1, prep


@pytest.mark.parametrize("mode", ["gauss_newton", "autograd"])
@pytest.mark.parametrize("method,kw", RL_CASES)
def test_meta_trpo_gradient_is_the_hand_combined_per_group_gradient(method, kw, mode) -> None:
    """grad = D1 grad S0 + D2 J^T grad S1, each stage's gradient by autograd of the hand-written objectives."""
    pol, step, train, d1, prep = rl_setup(method, kw, mode)
    A, a1, a2 = (rl_coords(x) for x in _rl_hand_groups(method, kw.get("adapt"), 0.3))
    old = rl_vec(pol)
    s0, s1, _, _ = rl_stage_functions(old, train, d1, A)
    v = old.clone().requires_grad_(True)
    g0 = torch.autograd.grad(s0(v), v)[0]
    g1 = torch.autograd.grad(s1(v), v)[0]
    torch.testing.assert_close(prep.grad, a1 * g0 + a2 * g1, rtol=1e-10, atol=1e-12)


def _rl_hand_groups(method, adapt, inner_lr):
    groups = resolve_groups([n for n, _ in RL_SHAPES], method, adapt)
    two = any(t.stages == 2 for t in groups.tableaus)
    alpha, a1, a2 = {}, {}, {}
    for n, t, ad in zip(groups.names, groups.tableaus, groups.adapted):
        alpha[n] = 2 * t.q[1][0] * inner_lr if (ad and t.stages == 2) else (inner_lr if ad and not two else 0.0)
        a1[n], a2[n] = (t.a[0], t.a[1]) if t.stages == 2 else (1.0, 0.0)
    return alpha, a1, a2


@pytest.mark.parametrize("method,kw", RL_CASES)
def test_meta_trpo_fisher_is_the_symmetric_per_group_form(method, kw) -> None:
    """F = D1 F0 D1 / w1 + D2 J^T F1 J D2 / w2 (w_i the largest-magnitude weight of stage i), with F0 and
    J^T F1 J explicit Hessians of the hand-written KLs; symmetric."""
    pol, step, train, d1, prep = rl_setup(method, kw)
    A, a1, a2 = (rl_coords(x) for x in _rl_hand_groups(method, kw.get("adapt"), 0.3))
    old = rl_vec(pol)
    _, _, kl0, kl1 = rl_stage_functions(old, train, d1, A)
    F = torch.zeros(old.numel(), old.numel(), dtype=DT)
    for a, kl in ((a1, kl0), (a2, kl1)):
        w = max(a.tolist(), key=lambda x: (abs(x), x))
        if w != 0.0:
            H = torch.autograd.functional.hessian(kl, old)
            F += a[:, None] * H * a[None, :] / w
    n = old.numel()
    eye = torch.eye(n, dtype=DT)
    got = torch.stack([prep.fvp(eye[i]) for i in range(n)], 1)
    torch.testing.assert_close(got, F, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(got, got.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method,kw", RL_CASES[:3])
def test_line_search_objective_and_kl_are_consistent_with_gradient_and_fisher(method, kw) -> None:
    """The line search's (J_D, KL_D): central differences along d give grad . d and d^T F d at theta_old."""
    pol, step, train, d1, prep = rl_setup(method, kw)
    d = torch.randn(prep.theta.numel(), generator=torch.Generator().manual_seed(7), dtype=DT)
    j0, kl0 = prep.evaluate(prep.theta)
    assert j0 == pytest.approx(prep.loss, rel=1e-12) and abs(kl0) < 1e-14
    eps = 1e-5  # central differences converge as eps^2 here: 1e-3 -> 1e-4 relative, 1e-5 -> 1e-8
    jp, _ = prep.evaluate(prep.theta + eps * d)
    jm, _ = prep.evaluate(prep.theta - eps * d)
    assert (jp - jm) / (2 * eps) == pytest.approx(float(prep.grad @ d), rel=1e-7)
    eps = 1e-4
    _, klp = prep.evaluate(prep.theta + eps * d)
    _, klm = prep.evaluate(prep.theta - eps * d)
    assert (klp - 2 * kl0 + klm) / eps ** 2 == pytest.approx(float(d @ prep.fvp(d)), rel=1e-5)


@pytest.mark.parametrize("mode", ["gauss_newton", "autograd"])
@pytest.mark.parametrize("method,steps", [("midpoint", 1), ("ralston", 2), ("euler", 1)])
def test_meta_trpo_one_method_everywhere_is_uniform_bit_for_bit(method, steps, mode) -> None:
    train, d1 = [_batch(1), _batch(4)][:steps], _batch(2)
    out = []
    for spec in (method, {RL_HEAD: method, "*": method}):
        pol = _policy()
        step = MetaTRPOStep(pol, spec, inner_lr=0.3, inner_steps=steps, fvp_mode=mode, adapt=["*"])
        stats = step.step(pol.params(), train, d1 if step.adapts else None)
        out.append((rl_vec(pol), stats, step.alpha))
    assert torch.equal(out[0][0], out[1][0]) and out[0][1] == out[1][1] and out[0][2] == out[1][2]
    assert out[0][1]["accepted"] == 1.0


def test_meta_trpo_adapt_uses_per_group_rates_and_errors() -> None:
    pol = _policy()
    step = MetaTRPOStep(pol, {RL_HEAD: "midpoint", "*": "ralston"}, inner_lr=0.3, adapt="w1|b1|w0")
    assert step.alpha == {"w0": 2 * 0.75 * 0.3, "b0": 0.0, "w1": 0.3, "b1": 0.3, "log_std": 0.0}
    assert step.method_name == "w1|b1|log_std=midpoint,*=ralston" and step.tableau is None
    assert pol.head_pattern == RL_HEAD
    d0 = _batch(1)
    got = step.adapt(pol.params(), [d0])
    A = rl_coords(step.alpha)
    old = rl_vec(pol).requires_grad_(True)
    for t in range(T_):
        ref = rl_inner(old, d0, t, A).detach()
        torch.testing.assert_close(torch.cat([got[n][t].reshape(-1) for n, _ in RL_SHAPES]), ref,
                                   rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="no pattern matches parameter"):
        MetaTRPOStep(pol, {"head.*": "midpoint"})
    with pytest.raises(ValueError, match="one- and two-stage"):
        MetaTRPOStep(pol, {RL_HEAD: "rk4", "*": "rk4"})
    with pytest.raises(ValueError, match="adapt="):
        MetaTRPOStep(pol, "midpoint", adapt="head")


# ---------------------------------------------------------------------------------------------- trainers

def test_sinusoid_script_with_per_layer_method_and_adapt(tmp_path) -> None:
    args = ["--method", "w2|b2=midpoint,*=ralston", "--adapt", "w2,b2,w1", "--iterations", "3", "--eval-tasks", "6",
            "--test-inner-steps", "2", "--no-compile", "--no-progress", "--logdir", str(tmp_path),
            "--checkpoint-interval", "3", "--inner-lr", "0.01"]
    m = load_script("train_sinusoid").main(args)
    rates = step_sizes(["w0", "b0", "w1", "b1", "w2", "b2"], "w2|b2=midpoint,*=ralston", 0.01, adapt="w2,b2,w1")
    assert m["method"] == "w2|b2=midpoint,*=ralston" and m["adapt"] == "w2,b2,w1" and m["adapt_lr"] == rates
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["adapt_lr"] == rates and on_disk["method"] == m["method"]
    cfg = load_checkpoint(latest_checkpoint(str(tmp_path)))["config"]
    assert cfg["method"] == "w2|b2=midpoint,*=ralston" and cfg["adapt"] == "w2,b2,w1"
    with pytest.raises(SystemExit, match="adapt='w2,b2,w1', this run asks for adapt='w2,b2'"):
        load_script("train_sinusoid").main([*args[:2], "--adapt", "w2,b2", *args[4:], "--resume"])


def test_trainer_evaluates_with_the_per_parameter_rates(tmp_path) -> None:
    from rkmeta_rl.supervised.sinusoid_problem import SinusoidProblem
    from rkmeta_rl.supervised.trainer import MetaTrainConfig

    cfg = MetaTrainConfig(method="w2|b2=midpoint,*=heun", adapt="w2|b2", iterations=1, meta_batch_size=2,
                          device="cpu", test_inner_steps=2, eval_interval=0, final_eval_tasks=3, inner_lr=0.05)
    trainer = MetaTrainer(SinusoidProblem(), cfg)
    assert trainer.adapt_lr == {"w0": 0.0, "b0": 0.0, "w1": 0.0, "b1": 0.0, "w2": 0.05, "b2": 0.05}
    got = trainer.evaluate(3, seed=5, steps=2)["mse"]
    data = SinusoidProblem().sample_tasks(3, torch.Generator().manual_seed(5), 2, torch.device("cpu"))
    ref = adapt_and_score(trainer.params, trainer.problem.support_loss, trainer.problem.metric_fn, data,
                          trainer.adapt_lr, 2)["mse"]
    np.testing.assert_array_equal(got, ref.numpy())
    with pytest.raises(ValueError, match="no pattern matches"):
        MetaTrainer(SinusoidProblem(), MetaTrainConfig(method="w2|b2=midpoint", device="cpu"))


@pytest.mark.skipif(not os.path.isdir(OMNIGLOT_ROOT), reason="real Omniglot not found")
def test_fewshot_script_with_per_layer_method_and_anil(tmp_path) -> None:
    m = load_script("train_fewshot").main([
        "--dataset", "omniglot", "--method", "fc.*=midpoint,*=ralston", "--adapt", "fc.*", "--data-root",
        OMNIGLOT_ROOT, "--iterations", "2", "--meta-batch-size", "2", "--eval-interval", "0", "--queries", "1",
        "--eval-tasks", "4", "--logdir", str(tmp_path), "--no-progress"])
    assert m["method"] == "fc.*=midpoint,*=ralston" and m["adapt"] == "fc.*"
    assert m["adapt_lr"]["fc.weight"] == pytest.approx(0.4) and m["adapt_lr"]["conv1.weight"] == 0.0


def test_meta_trpo_with_a_method_mapping_and_adapt(tmp_path) -> None:
    small = dict(meta_batch_size=3, fast_batch_size=4, policy_kwargs={"hidden_sizes": (16, 16)})
    model = MetaTRPO(env="rkmeta/Navigation2D-v0", method={"w2|b2|log_std": "midpoint", "*": "ralston"},
                     adapt=["w2", "b2", "log_std", "w1"], inner_lr=0.1, **small)
    assert model.alpha == pytest.approx({"w0": 0.0, "b0": 0.0, "w1": 0.15, "b1": 0.0, "w2": 0.1, "b2": 0.1,
                                          "log_std": 0.1}, rel=1e-15, abs=0.0)
    model.learn(1)
    path = os.path.join(str(tmp_path), "model.pt")
    model.save(path)
    loaded = MetaTRPO.load(path)
    assert loaded.tableau.name == "w2|b2|log_std=midpoint,*=ralston" and loaded.alpha == model.alpha
    adapted = loaded.adapt({"goal": np.array([0.3, 0.3], np.float32)}, num_steps=1)
    p0 = loaded.policy.params()
    assert torch.equal(adapted["w0"], p0["w0"]) and not torch.equal(adapted["w2"], p0["w2"])


# ---------------------------------------------------------------------------------------------- the study script


def test_study_statistics_and_resume_from_finished_runs(tmp_path) -> None:
    study = load_script("per_layer_study")
    m, hw = study.mean_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and hw == pytest.approx(4.303 * 1.0 / 3 ** 0.5)
    assert study.mean_interval([5.0]) == (5.0, None)
    # finished runs are read, not rerun (no training happens here: every metrics.json exists)
    for key, acc in (("midpoint", [0.9, 0.8]), ("anil", [0.7, 0.6])):
        for seed, a in zip((0, 1), acc):
            d = tmp_path / "runs" / "omniglot" / key / f"s{seed}"
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps({"accuracy": a}))
    out = study.main(["--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
                      "--results", str(tmp_path / "rec"), "--seeds", "0", "1",
                      "--benchmarks", "omniglot", "--variants", "midpoint", "anil", "--omniglot-root", str(tmp_path)])
    assert out["omniglot"]["anil"]["values"] == [0.7, 0.6]
    assert out["omniglot"]["midpoint"]["ci95"] == pytest.approx(12.706 * np.std([0.9, 0.8], ddof=1) / 2 ** 0.5)
    md = (tmp_path / "docs" / "per_layer_study.md").read_text()
    assert "| ANIL (midpoint, head adapted) | 0.65 ± " in md and (tmp_path / "docs" / "per_layer_study.png").is_file()
    # every finished run left a record: with the run folders gone the table is the same, nothing is trained
    assert (tmp_path / "rec" / "omniglot" / "anil" / "s1.json").is_file()
    shutil.rmtree(tmp_path / "runs")
    again = study.main(["--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs2"), "--results",
                        str(tmp_path / "rec"), "--seeds", "0", "1", "--benchmarks", "omniglot", "--variants",
                        "midpoint", "anil", "--omniglot-root", str(tmp_path), "--report-only"])
    assert again["omniglot"] == out["omniglot"] and not (tmp_path / "runs").exists()
    # a record of another configuration (here: other iterations) is not this run's
    other = study.main(["--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs3"), "--results",
                        str(tmp_path / "rec"), "--seeds", "0", "1", "--benchmarks", "omniglot", "--variants",
                        "midpoint", "--omniglot-iterations", "7", "--omniglot-root", str(tmp_path), "--report-only"])
    assert other["omniglot"] == {} and other["runs"]["finished"] == 0
    # the variants' flags: the head pattern per benchmark, ANIL's adapt as a comma list
    anil = next(v for v in study.VARIANTS if v.key == "anil")
    assert anil.flags("nav") == ["--method", "midpoint", "--adapt", "w2,b2,log_std"]
    mixed = next(v for v in study.VARIANTS if v.key == "head-midpoint_body-euler")
    assert mixed.flags("omniglot") == ["--method", "fc.*=midpoint,*=euler"]


def test_study_runs_jobs_in_parallel_reports_failures_and_restarts_unfinished(tmp_path, monkeypatch) -> None:
    study = load_script("per_layer_study")

    def fake(benchmark, variant, seed, logdir, args):  # a "training run": writes metrics, or fails for itb
        code = (f"import json, os, sys; os.makedirs({logdir!r}, exist_ok=True); "
                f"sys.exit(3) if {variant.key!r}.endswith('itb') else "
                f"json.dump({{'accuracy': 0.5 + {seed} / 10}}, open(os.path.join({logdir!r}, 'metrics.json'), 'w'))")
        return [sys.executable, "-c", code]

    monkeypatch.setattr(study, "run_command", fake)
    stale = tmp_path / "runs" / "omniglot" / "ralston" / "s1"
    stale.mkdir(parents=True)
    (stale / "progress.csv").write_text("stopped before its first checkpoint")
    out = study.main(["--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
                      "--results", str(tmp_path / "rec"), "--seeds", "0", "1",
                      "--benchmarks", "omniglot", "--variants", "midpoint", "ralston", "head-midpoint_body-itb",
                      "--omniglot-root", str(tmp_path), "--jobs", "3"])
    assert out["omniglot"]["ralston"]["values"] == [0.5, 0.6]  # the stale folder was moved aside, then rerun
    assert list((tmp_path / "runs" / "omniglot" / "ralston").glob("s1.unfinished-*"))
    assert out["runs"]["finished"] == 4 and out["runs"]["planned"] == 6
    assert len(out["runs"]["errors"]) == 2 and all("exit code 3" in e for e in out["runs"]["errors"])
    md = (tmp_path / "docs" / "per_layer_study.md").read_text()
    assert "head midpoint, body itb" not in md and "n = seeds finished of 2 planned" in md
    again = study.main(["--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
                      "--results", str(tmp_path / "rec"), "--seeds", "0", "1",
                        "--benchmarks", "omniglot", "--variants", "midpoint", "--omniglot-root", str(tmp_path),
                        "--report-only"])
    assert again["omniglot"]["midpoint"]["values"] == [0.5, 0.6] and again["runs"]["errors"] == []


@pytest.mark.slow  # two real runs through the training scripts, about half a minute
@pytest.mark.skipif(not os.path.isdir(OMNIGLOT_ROOT), reason="real Omniglot not found")
def test_study_smoke(tmp_path) -> None:
    study = load_script("per_layer_study")
    args = ["--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"),
                      "--results", str(tmp_path / "rec"), "--seeds", "0", "--variants",
            "head-midpoint_body-ralston", "--omniglot-iterations", "1", "--omniglot-meta-batch-size", "2",
            "--omniglot-eval-tasks", "4", "--nav-iterations", "1", "--nav-meta-batch-size", "2",
            "--nav-fast-batch-size", "2", "--omniglot-root", OMNIGLOT_ROOT]
    out = study.main(args)
    assert 0.0 <= out["omniglot"]["head-midpoint_body-ralston"]["mean"] <= 1.0
    assert out["nav"]["head-midpoint_body-ralston"]["mean"] < 0.0
    m = json.loads((tmp_path / "runs" / "nav" / "head-midpoint_body-ralston" / "s0" / "metrics.json").read_text())
    assert m["method"] == "w2|b2|log_std=midpoint,*=ralston"


def test_study_step_rule_fixed_has_its_own_commands_records_and_files(tmp_path) -> None:
    """Under ``--step-rule fixed`` every run gets the flag, and its records and table are kept apart from the
    tableau-rule study's (whose commands, without the flag, stay as recorded)."""
    study = load_script("per_layer_study")
    base = ["--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"), "--seeds", "0",
            "--benchmarks", "nav", "--variants", "midpoint"]
    tab = study.parse_args(base)
    fixed = study.parse_args(base + ["--step-rule", "fixed"])
    v = study.VARIANTS[0]
    for bench in ("nav", "omniglot"):
        tab.omniglot_root = fixed.omniglot_root = str(tmp_path)
        cmd_t = study.run_command(bench, v, 0, "LOG", tab)
        cmd_f = study.run_command(bench, v, 0, "LOG", fixed)
        assert "--step-rule" not in cmd_t
        i = cmd_f.index("--step-rule")
        assert cmd_f[i + 1] == "fixed" and [a for j, a in enumerate(cmd_f) if j not in (i, i + 1)] == cmd_t
    assert tab.results.endswith(os.path.join("results", "per_layer"))
    assert fixed.results.endswith(os.path.join("results", "per_layer_fixed"))
    assert study.study_name(tab) == "per_layer_study" and study.study_name(fixed) == "per_layer_study_fixed"
    # a finished fixed-rule run is reported in its own table
    d = tmp_path / "runs" / "nav" / "midpoint" / "s0"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"post_return": -14.0}))
    out = study.main(base + ["--step-rule", "fixed", "--results", str(tmp_path / "rec"), "--report-only"])
    assert out["nav"]["midpoint"]["values"] == [-14.0]
    md = (tmp_path / "docs" / "per_layer_study_fixed.md").read_text()
    assert "(fixed step rule)" in md and not (tmp_path / "docs" / "per_layer_study.md").exists()
