"""Conjugate gradient and the TRPO step (scaling to max_kl, backtracking, restoring on failure)."""

from __future__ import annotations

import torch

from rkmeta_rl.rl import conjugate_gradient, trpo_update


def _spd(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m @ m.T + n * torch.eye(n, dtype=torch.float64)


def test_cg_solves_spd_system() -> None:
    a = _spd(8)
    b = torch.arange(1.0, 9.0, dtype=torch.float64)
    x, res = conjugate_gradient(lambda v: a @ v, b, iters=8)     # n iterations: exact in exact arithmetic
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-9)
    assert res < 1e-6
    # fewer iterations: residual reported is the true one
    x3, res3 = conjugate_gradient(lambda v: a @ v, b, iters=3)
    torch.testing.assert_close(torch.tensor(res3, dtype=torch.float64), torch.linalg.norm(b - a @ x3),
                               rtol=1e-6, atol=1e-9)
    # deterministic (no random initialisation)
    x3b, _ = conjugate_gradient(lambda v: a @ v, b, iters=3)
    assert torch.equal(x3, x3b)


def test_trpo_step_scaling_and_line_search() -> None:
    n = 5
    f = _spd(n, 1)
    theta = torch.zeros(n, dtype=torch.float64)
    grad = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    max_kl = 0.01
    step = torch.linalg.solve(f, grad)
    full = step * torch.sqrt(max_kl / (0.5 * step @ f @ step))
    torch.testing.assert_close(0.5 * full @ f @ full, torch.tensor(max_kl, dtype=torch.float64))
    calls: list[float] = []

    def quadratic(x: torch.Tensor) -> tuple[float, float]:  # linear loss, quadratic KL: full step accepted
        calls.append(1.0)
        return float(grad @ x), float(0.5 * x @ f @ x)

    new, st = trpo_update(theta, grad, lambda v: f @ v, quadratic, 0.0, max_kl=max_kl, cg_iters=n)
    torch.testing.assert_close(new, theta - full, rtol=1e-8, atol=1e-10)
    assert st.accepted and st.ls_steps == 1 and st.step_frac == 1.0 and abs(st.kl - max_kl) < 1e-9

    # true KL 4x the quadratic estimate: first acceptable fraction is 0.8^k with 4 * 0.64^k * max_kl <= max_kl
    new, st = trpo_update(theta, grad, lambda v: f @ v, lambda x: (float(grad @ x), float(2.0 * x @ f @ x)), 0.0,
                          max_kl=max_kl, cg_iters=n)
    k = next(k for k in range(15) if 4 * 0.64 ** k <= 1.0 + 1e-12)
    assert st.accepted and st.ls_steps == k + 1
    torch.testing.assert_close(new, theta - 0.8 ** k * full, rtol=1e-8, atol=1e-10)

    # no step improves: parameters restored, all tries used
    new, st = trpo_update(theta, grad, lambda v: f @ v, lambda x: (1.0, 0.0), 0.0, max_kl=max_kl, ls_max_steps=15)
    assert torch.equal(new, theta) and not st.accepted and st.ls_steps == 15 and st.improvement == 0.0
