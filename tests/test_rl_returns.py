"""GAE, discounted returns, per-task normalisation and the linear feature baseline against exact answers."""

from __future__ import annotations

import numpy as np
import torch

from rkmeta_rl.rl import LinearFeatureBaseline, baseline_features, discounted_returns, fit_linear_baseline, gae
from rkmeta_rl.rl.episodes import normalize_per_task


def _t(x: list) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def test_gae_hand_computed_with_termination() -> None:
    # one task, horizon 4, two trajectories (layout [T, H, B]); trajectory 1 terminates at step 1
    r = _t([[[1.0, 2.0], [3.0, 4.0], [5.0, 9.0], [7.0, 9.0]]])
    m = _t([[[1, 1], [1, 1], [1, 0], [1, 0]]])
    v = _t([[[0.5, 1.0], [1.5, 2.0], [2.5, 9.0], [3.5, 9.0]]])
    g, lam = 0.5, 0.5
    # trajectory 0 (alive throughout, value after the horizon 0):
    d3 = 7 - 3.5                      # 3.5
    d2 = 5 + g * 3.5 - 2.5            # 4.25
    d1 = 3 + g * 2.5 - 1.5            # 2.75
    d0 = 1 + g * 1.5 - 0.5            # 1.25
    a3 = d3
    a2 = d2 + g * lam * a3
    a1 = d1 + g * lam * a2
    a0 = d0 + g * lam * a1
    # trajectory 1: steps 0, 1 live; step 1 ends it, so V after it is 0
    e1 = 4 - 2.0
    e0 = 2 + g * 2.0 - 1.0
    b1 = e1
    b0 = e0 + g * lam * b1
    expected = _t([[[a0, b0], [a1, b1], [a2, 0.0], [a3, 0.0]]])
    torch.testing.assert_close(gae(r, v, m, g, lam), expected, rtol=0, atol=1e-12)
    # lambda = 1: advantages are returns minus values
    ret = discounted_returns(r, m, g)
    torch.testing.assert_close(ret[0, :, 1], _t([2 + g * 4, 4, 0, 0]))
    torch.testing.assert_close(ret[0, 0, 0], _t(1 + g * 3 + g * g * 5 + g ** 3 * 7))
    torch.testing.assert_close(gae(r, v, m, g, 1.0), (ret - v) * m)


def test_normalize_per_task() -> None:
    x = _t([[[1.0], [2.0], [3.0], [100.0]], [[5.0], [5.0], [7.0], [9.0]]])
    m = _t([[[1], [1], [1], [0]], [[1], [1], [1], [1]]])
    out = normalize_per_task(x, m)
    live0 = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(out[0, :3, 0].numpy(), (live0 - live0.mean()) / (live0.std() + 1e-8))
    assert out[0, 3, 0] == 0.0
    live1 = np.array([5.0, 5.0, 7.0, 9.0])
    np.testing.assert_allclose(out[1, :, 0].numpy(), (live1 - live1.mean()) / (live1.std() + 1e-8))


def _numpy_baseline(obs: np.ndarray, ret: np.ndarray, mask: np.ndarray, reg: float) -> np.ndarray:
    """Per-task reference (rllab LinearFeatureBaseline): features of live steps, ridge solve, predict."""
    t_, h_, b_, _ = obs.shape
    values = np.zeros((t_, h_, b_))
    for i in range(t_):
        rows, ys, idx = [], [], []
        for t in range(h_):
            for b in range(b_):
                if mask[i, t, b]:
                    o = np.clip(obs[i, t, b], -10, 10)
                    tt = t / 100.0
                    rows.append(np.concatenate([o, o ** 2, [tt, tt ** 2, tt ** 3, 1.0]]))
                    ys.append(ret[i, t, b])
                    idx.append((t, b))
        x = np.array(rows)
        w = np.linalg.solve(x.T @ x + reg * np.eye(x.shape[1]), x.T @ np.array(ys))
        for (t, b), row in zip(idx, x):
            values[i, t, b] = row @ w
    return values


def test_baseline_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    t_, h_, b_ = 3, 12, 4
    obs = rng.normal(size=(t_, h_, b_, 2))
    obs[1, :, :, 0] *= 20  # exercises the clip at +-10
    ret = rng.normal(size=(t_, h_, b_)) * 10
    mask = np.ones((t_, h_, b_))
    mask[0, 7:, 1] = 0
    mask[2, 3:, :2] = 0
    ref = _numpy_baseline(obs, ret, mask, 1e-5)
    got = LinearFeatureBaseline(1e-5).fit_predict(torch.tensor(obs), torch.tensor(ret), torch.tensor(mask))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-7, atol=1e-7)
    # float32 inputs: same answer to float32 precision (the solve runs in float64)
    got32 = LinearFeatureBaseline(1e-5).fit_predict(torch.tensor(obs, dtype=torch.float32),
                                                    torch.tensor(ret, dtype=torch.float32),
                                                    torch.tensor(mask, dtype=torch.float32))
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), ref, rtol=1e-3, atol=1e-3)


def test_baseline_singular_systems_never_nan() -> None:
    t_, h_, b_ = 3, 5, 2
    obs = torch.zeros(t_, h_, b_, 2, dtype=torch.float64)     # constant obs: collinear / zero features
    ret = torch.arange(t_ * h_ * b_, dtype=torch.float64).reshape(t_, h_, b_)
    mask = torch.ones(t_, h_, b_, dtype=torch.float64)
    mask[1] = 0.0                                               # a task with no live step: X = 0
    feats = baseline_features(obs, mask)
    # unregularised first try fails (singular); the retry with more regularisation succeeds
    w = fit_linear_baseline(feats, ret, mask, reg_coeff=0.0)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w[1], torch.zeros_like(w[1]))   # all-masked task: zero baseline
    # the retried fit equals the ridge solution with the regularisation that first worked (1e-8)
    x = feats[0].reshape(-1, feats.shape[-1])
    ref = torch.linalg.solve(x.T @ x + 1e-8 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ ret[0].reshape(-1))
    torch.testing.assert_close(w[0], ref)
    # non-finite inputs: every try fails, zero weights rather than NaN
    bad = ret.clone()
    bad[2, 0, 0] = float("inf")
    w = fit_linear_baseline(feats, bad, mask)
    assert torch.isfinite(w).all() and (w[2] == 0).all()
    v = LinearFeatureBaseline().fit_predict(obs, ret, mask)
    assert torch.isfinite(v).all()
