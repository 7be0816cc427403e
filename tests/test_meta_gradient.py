"""The RK meta-gradient against exact answers.

References are written independently of the engine: flat parameter vectors, explicit Hessians from
``torch.autograd.functional.hessian`` (MAML's chain rule ``(I - alpha H) grad L_Q``), and central finite
differences in float64 of the meta-objective ``J(theta) = mean_T sum_i a_i L_i(theta_i(theta))``.
"""

from __future__ import annotations

import pytest
import torch

from rkmeta_rl.rk import PerStage, adapt_and_score, get_tableau, meta_gradient

DT = torch.float64
SIZES = [(1, 6), (6, 6), (6, 1)]  # a 1-6-6-1 tanh MLP: smooth, so finite differences are clean


def _shapes() -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for i, (fi, fo) in enumerate(SIZES):
        out[f"w{i}"] = (fo, fi)
        out[f"b{i}"] = (fo,)
    return out


SHAPES = _shapes()
NUMEL = sum(torch.Size(s).numel() for s in SHAPES.values())


def unflat(v: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k, s in SHAPES.items():
        n = torch.Size(s).numel()
        out[k] = v[i:i + n].view(s)
        i += n
    return out


def flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([d[k].reshape(-1) for k in SHAPES])


def net(p, x):
    h = torch.tanh(x @ p["w0"].T + p["b0"])
    h = torch.tanh(h @ p["w1"].T + p["b1"])
    return h @ p["w2"].T + p["b2"]


def support_loss(p, d):
    return ((net(p, d["xs"]) - d["ys"]) ** 2).mean()


def query_loss(p, d):
    return ((net(p, d["xq"]) - d["yq"]) ** 2).mean()


def make_data(n_tasks: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_tasks, 14, 1, generator=g, dtype=DT) * 4 - 2
    amp = torch.rand(n_tasks, 1, 1, generator=g, dtype=DT) + 0.5
    y = amp * torch.sin(2 * x)
    return {"xs": x[:, :7], "ys": y[:, :7], "xq": x[:, 7:], "yq": y[:, 7:]}


@pytest.fixture(scope="module")
def theta() -> torch.Tensor:
    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(1), dtype=DT) * 0.7


def task(d, t):
    return {k: v[t] for k, v in d.items()}


def grad_flat(fn, v):
    v = v.detach().requires_grad_(True)
    return torch.autograd.grad(fn(v), v)[0]


def hand_rk2(theta_v, data, a1, a2, alpha, steps, first_order=False):
    """sum_T [a1 gS(theta) + a2 prod_j (I - H_S(theta_j) alpha) gQ(theta_n)] / T with explicit Hessians,
    theta_{j+1} = theta_j - alpha * gS(theta_j).

    ``a1``, ``a2`` and ``alpha`` are numbers or flat per-coordinate vectors (per-group methods and ``adapt=``,
    tests/test_per_layer.py): ``d theta' / d theta = I - alpha H``, whose transpose is ``I - H alpha``.
    """
    total = torch.zeros_like(theta_v)
    n = data["xs"].shape[0]
    for t in range(n):
        d = task(data, t)
        ls = lambda v, d=d: support_loss(unflat(v), d)  # noqa: E731
        lq = lambda v, d=d: query_loss(unflat(v), d)  # noqa: E731
        pts = [theta_v]
        for _ in range(steps):
            pts.append(pts[-1] - alpha * grad_flat(ls, pts[-1]))
        g = grad_flat(lq, pts[-1])
        if not first_order:
            for pt in reversed(pts[:-1]):
                H = torch.autograd.functional.hessian(ls, pt)
                g = g - H @ (alpha * g)
        total += a1 * grad_flat(ls, theta_v) + a2 * g
    return total / n


def engine(theta_v, data, method, inner_lr, path, **kw):
    g, stats = meta_gradient(unflat(theta_v.clone()), support_loss, query_loss, data, method, inner_lr,
                             path=path, **kw)
    return flat(g), stats


PATHS = ["vmap", "loop"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("steps", [1, 3])
def test_midpoint_is_maml(theta, path, steps) -> None:
    data = make_data(4)
    ref = hand_rk2(theta, data, 0.0, 1.0, 0.1, steps)
    got, stats = engine(theta, data, "midpoint", 0.1, path, inner_steps=steps)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert set(stats) >= {"support_loss_pre", "query_loss_pre", "support_loss_post", "query_loss_post"}
    # MAML's alpha is exactly inner_lr: the post-adaptation support loss matches a manual step
    d0 = task(data, 0)
    manual = theta - 0.1 * grad_flat(lambda v: support_loss(unflat(v), d0), theta)
    _, s1 = engine(theta, {k: v[:1] for k, v in data.items()}, "midpoint", 0.1, path)
    assert s1["query_loss_post"] == pytest.approx(float(query_loss(unflat(manual), d0)), rel=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_euler_is_support_gradient(theta, path) -> None:
    data = make_data(3)
    ref = torch.stack([grad_flat(lambda v, t=t: support_loss(unflat(v), task(data, t)), theta)
                       for t in range(3)]).mean(0)
    got, _ = engine(theta, data, "euler", 0.1, path)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["heun", "ralston", "itb", 0.3, 2.0])
def test_second_order_members_by_hand(theta, path, method) -> None:
    data = make_data(3)
    tab = get_tableau(method)
    a1, a2, q21 = tab.a[0], tab.a[1], tab.q[1][0]
    ref = hand_rk2(theta, data, a1, a2, 2 * q21 * 0.05, 1)  # each method's own step alpha = q21 h, h = 2 alpha_MAML
    got, _ = engine(theta, data, method, 0.05, path)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    ref_fixed = hand_rk2(theta, data, a1, a2, 0.05, 1)  # step_rule="fixed": everyone adapts with alpha_MAML
    got_fixed, _ = engine(theta, data, method, 0.05, path, step_rule="fixed")
    torch.testing.assert_close(got_fixed, ref_fixed, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_first_order_drops_hessian(theta, path) -> None:
    data = make_data(3)
    ref = hand_rk2(theta, data, 1 / 3, 2 / 3, 0.15, 2, first_order=True)
    got, _ = engine(theta, data, "ralston", 0.1, path, inner_steps=2, first_order=True)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    second, _ = engine(theta, data, "ralston", 0.1, path, inner_steps=2)
    assert (second - got).abs().max() > 1e-4  # the Hessian term is not negligible here


def central_fd(fn, v, coords, eps=1e-5):
    out = []
    for c in coords:
        e = torch.zeros_like(v)
        e[c] = eps
        out.append((fn(v + e) - fn(v - e)) / (2 * eps))
    return torch.stack(out)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["midpoint", "ralston", "kutta3", "rk4"])
def test_matches_finite_differences(theta, path, method) -> None:
    """The full meta-gradient, second-order terms included, equals central differences of J (float64).

    For stages >= 3, ``k_j`` in the stage points are themselves gradients of theta, and J's value at a
    perturbed theta recomputes them there: finite differences see every order of derivative the engine has
    to produce by differentiating through."""
    tab = get_tableau(method)
    h = tab.step_size(0.1)
    stage_data = [make_data(2, seed=10 + i) for i in range(tab.stages)]
    task_data = PerStage(stage_data) if tab.stages > 2 else stage_data[0]
    if tab.stages <= 2:
        stage_data = [stage_data[0]] * tab.stages

    def J(v):
        return meta_objective_full(v, stage_data, tab, h)

    got, _ = engine(theta, task_data, method, 0.1, path)
    coords = list(range(0, NUMEL, 5))
    fd = central_fd(J, theta, coords)
    torch.testing.assert_close(got[coords], fd, rtol=1e-6, atol=1e-8)


def meta_objective_full(theta_v, stage_data, tab, h):
    """J by value: every k_j recomputed at theta_v itself (so J is an honest function of theta)."""
    s = tab.stages
    n = stage_data[0]["xs"].shape[0]
    total = torch.zeros((), dtype=DT)
    for t in range(n):
        ds = [task(d, t) for d in stage_data]
        v = theta_v.detach().requires_grad_(True)
        ks = [torch.autograd.grad(support_loss(unflat(v), ds[0]), v, create_graph=True)[0]]
        for i in range(2, s + 1):
            pt = v - h * sum(tab.q[i - 1][j] * ks[j] for j in range(i - 1))
            li = query_loss(unflat(pt), ds[i - 1])
            if i < s:
                ks.append(torch.autograd.grad(li, v, create_graph=True)[0])
        val = tab.a[0] * support_loss(unflat(v), ds[0])
        for i in range(2, s + 1):
            pt = v - h * sum(tab.q[i - 1][j] * ks[j] for j in range(i - 1))
            val = val + tab.a[i - 1] * query_loss(unflat(pt), ds[i - 1])
        total = total + val.detach()
    return total / n


def test_vmap_equals_loop_float32() -> None:
    torch.manual_seed(0)
    theta = {k: torch.randn(s) * 0.5 for k, s in SHAPES.items()}
    data = {k: v.float() for k, v in make_data(8).items()}
    for method in ("euler", "midpoint", "heun", "ralston", "itb", "generic(0.8)"):
        gv, sv = meta_gradient(theta, support_loss, query_loss, data, method, 0.05, path="vmap", inner_steps=2
                               if method != "euler" else 1)
        gl, sl = meta_gradient(theta, support_loss, query_loss, data, method, 0.05, path="loop", inner_steps=2
                               if method != "euler" else 1)
        for k in theta:
            torch.testing.assert_close(gv[k], gl[k], rtol=1e-5, atol=1e-6)
        for k in sv:
            assert sv[k] == pytest.approx(sl[k], rel=1e-5)


def test_params_not_modified_and_grads_detached(theta) -> None:
    p = unflat(theta.clone())
    before = {k: v.clone() for k, v in p.items()}
    g, _ = meta_gradient(p, support_loss, query_loss, make_data(2), "heun", 0.1)
    for k in p:
        assert torch.equal(p[k], before[k])
        assert not g[k].requires_grad and g[k].shape == p[k].shape


def test_input_errors(theta) -> None:
    p, data = unflat(theta.clone()), make_data(2)
    with pytest.raises(ValueError, match="inner_lr"):
        meta_gradient(p, support_loss, query_loss, data, "midpoint", -0.1)
    with pytest.raises(ValueError, match="inner_steps"):
        meta_gradient(p, support_loss, query_loss, data, "midpoint", 0.1, inner_steps=0)
    with pytest.raises(ValueError, match="step_rule"):
        meta_gradient(p, support_loss, query_loss, data, "midpoint", 0.1, step_rule="nope")
    with pytest.raises(ValueError, match="PerStage"):
        meta_gradient(p, support_loss, query_loss, data, "rk4", 0.1)
    with pytest.raises(ValueError, match="one pytree per stage"):
        meta_gradient(p, support_loss, query_loss, PerStage([data, data]), "rk4", 0.1)
    with pytest.raises(ValueError, match="leading dimension"):
        meta_gradient(p, support_loss, query_loss, {"xs": data["xs"], "ys": data["ys"][:1]}, "midpoint", 0.1)
    with pytest.raises(ValueError, match="unknown RK method"):
        meta_gradient(p, support_loss, query_loss, data, "midpiont", 0.1)
    with pytest.raises(ValueError, match="path"):
        meta_gradient(p, support_loss, query_loss, data, "midpoint", 0.1, path="gpu")


@pytest.mark.parametrize("path", PATHS)
def test_adapt_and_score(theta, path) -> None:
    data = make_data(3)
    out = adapt_and_score(unflat(theta), support_loss, lambda p, d: {"mse": query_loss(p, d)}, data, 0.1, 3,
                          path=path)
    assert out["mse"].shape == (3, 4)
    for t in range(3):
        d = task(data, t)
        v = theta.clone()
        for s in range(4):
            assert float(out["mse"][t, s]) == pytest.approx(float(query_loss(unflat(v), d)), rel=1e-12)
            v = v - 0.1 * grad_flat(lambda u, d=d: support_loss(unflat(u), d), v)


def test_compiled_equals_eager() -> None:
    """The torch.compile'd vectorised program computes the same meta-gradient as the eager one."""
    torch.manual_seed(0)
    theta = {k: torch.randn(s) * 0.5 for k, s in SHAPES.items()}
    data = {k: v.float() for k, v in make_data(5).items()}
    ge, se = meta_gradient(theta, support_loss, query_loss, data, "ralston", 0.05, path="vmap")
    gc, sc = meta_gradient(theta, support_loss, query_loss, data, "ralston", 0.05, path="vmap", compile=True)
    for k in theta:
        torch.testing.assert_close(gc[k], ge[k], rtol=1e-5, atol=1e-6)
    assert sc["query_loss_post"] == pytest.approx(se["query_loss_post"], rel=1e-5)


@pytest.mark.parametrize("path", PATHS)
def test_post_adaptation_stats_of_a_four_stage_method(theta, path) -> None:
    """The diagnostics' adapted point is stage 2's: theta - alpha k1 on stage 1's support, scored on stage 2."""
    ps = PerStage([make_data(3, seed=20 + i) for i in range(4)])
    _, stats = meta_gradient(unflat(theta), support_loss, query_loss, ps, "rk4", 0.1, path=path)
    alpha = get_tableau("rk4").inner_lr(0.1)
    ref = []
    for t in range(3):
        d0, d1 = task(ps[0], t), task(ps[1], t)
        post = theta - alpha * grad_flat(lambda u, d0=d0: support_loss(unflat(u), d0), theta)
        ref.append(float(query_loss(unflat(post), d1)))
    assert stats["query_loss_post"] == pytest.approx(sum(ref) / 3, rel=1e-12)
    _, cheap = meta_gradient(unflat(theta), support_loss, query_loss, ps, "rk4", 0.1, path=path, stats=False)
    assert set(cheap) == {"support_loss_pre", "query_loss_post", "num_tasks"}  # no extra forward passes
    assert cheap["query_loss_post"] == stats["query_loss_post"]
