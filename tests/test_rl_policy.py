"""The functional Gaussian MLP policy: densities and KL against torch.distributions, per-task layout."""

from __future__ import annotations

import pytest
import torch

from rkmeta_rl.rl import GaussianMLPPolicy, per_task


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_log_prob_kl_match_torch_distributions(activation: str) -> None:
    pol = GaussianMLPPolicy(3, 2, (7, 5), activation, init_log_std=-0.3, dtype=torch.float64)
    p = pol.params()
    p2 = {k: v.detach() + 0.1 * torch.randn_like(v) for k, v in p.items()}
    obs = torch.randn(4, 6, 3, dtype=torch.float64)
    act = torch.randn(4, 6, 2, dtype=torch.float64)
    dist = pol.distribution(p, obs)
    assert dist.mean.shape == (4, 6, 2)
    torch.testing.assert_close(pol.log_prob(p, obs, act), dist.log_prob(act).sum(-1))
    kl_ref = torch.distributions.kl_divergence(pol.distribution(p, obs), pol.distribution(p2, obs)).sum(-1)
    torch.testing.assert_close(pol.kl(p, p2, obs), kl_ref)
    # explicit MLP
    act_fn = torch.relu if activation == "relu" else torch.tanh
    h = act_fn(obs @ p["w0"].T + p["b0"])
    h = act_fn(h @ p["w1"].T + p["b1"])
    torch.testing.assert_close(pol.mean(p, obs), h @ p["w2"].T + p["b2"])


def test_per_task_parameters_equal_loop() -> None:
    pol = GaussianMLPPolicy(2, 2, (4,), "tanh", dtype=torch.float64)
    t_ = 3
    pt = {k: v.detach().unsqueeze(0).repeat(t_, *([1] * v.dim())) + 0.1 * torch.randn(t_, *v.shape,
          dtype=torch.float64) for k, v in pol.params().items()}
    obs = torch.randn(t_, 5, 2, 2, dtype=torch.float64)   # [T, ..., obs_dim]
    act = torch.randn(t_, 5, 2, 2, dtype=torch.float64)
    lp = pol.log_prob(pt, obs, act)
    assert lp.shape == (t_, 5, 2)
    for i in range(t_):
        pi = {k: v[i] for k, v in pt.items()}
        torch.testing.assert_close(lp[i], pol.log_prob(pi, obs[i], act[i]))
    # shared params expanded per task give the shared answer
    torch.testing.assert_close(pol.log_prob(per_task(pol.params(), t_), obs, act), pol.log_prob(pol.params(), obs, act))
    a, logp = pol.sample(pt, obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logp, pol.log_prob(pt, obs, a))


def test_bad_activation() -> None:
    with pytest.raises(ValueError):
        GaussianMLPPolicy(2, 2, activation="gelu")


@pytest.mark.parametrize("out,inp", [(2, 100), (100, 2), (64, 64), (8, 9), (9, 8)])
@pytest.mark.parametrize("extra", [False, True])
def test_per_task_linear_both_forms_equal_plain_product(out: int, inp: int, extra: bool) -> None:
    """``h w^T + b (+ h2 w2^T)`` per task: the transposed form for narrow outputs and the direct one agree with
    an explicit float64 sum (and therefore with each other), as values, not layouts."""
    from rkmeta_rl.rl import policy as policy_module
    from rkmeta_rl.rl.policy import per_task_linear

    g = torch.Generator().manual_seed(0)
    t, n = 3, 7
    h, h2 = torch.randn(t, n, inp, generator=g, dtype=torch.float64), torch.randn(t, n, inp, generator=g,
                                                                                 dtype=torch.float64)
    w, w2 = torch.randn(t, out, inp, generator=g, dtype=torch.float64), torch.randn(t, out, inp, generator=g,
                                                                                   dtype=torch.float64)
    b = torch.randn(t, out, generator=g, dtype=torch.float64)
    want = torch.einsum("tni,toi->tno", h, w) + b[:, None, :]
    if extra:
        want = want + torch.einsum("tni,toi->tno", h2, w2)
    transposed = out <= policy_module.NARROW_OUTPUT < inp
    got = per_task_linear(h, w, b, (h2, w2) if extra else None)
    assert got.shape == (t, n, out) and got.is_contiguous() == (not transposed)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
