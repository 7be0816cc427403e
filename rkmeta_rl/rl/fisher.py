"""Exact Fisher-vector products of the RK-weighted KL by Gauss-Newton products (docs/meta_rl.md).

At ``theta = theta_old`` the Hessian of ``KL(theta)`` (see :mod:`rkmeta_rl.rl.meta_trpo`) has the structure::

    d2 KL = a1 mean_T F0_T  +  a2 mean_T J_T^T F1_T J_T

(per-parameter methods: ``a1 W1 F0 W1 + a2 W2 J^T F1 J W2`` with the diagonal scales of
:mod:`rkmeta_rl.rl.stage_weights`, and per-group inner step sizes ``A = diag(alpha_l)``)

* ``F0_T`` / ``F1_T``: the Hessian at equality of the per-task masked-mean KL between diagonal Gaussians, on D0 at
  ``theta`` / on D1 at ``theta'_T``. With the mean ``mu(s)`` and a state-independent ``log_std``, it is
  ``J_mu^T diag(m / M / sigma^2) J_mu`` on the mean network's parameters plus ``2 (sum m / M) I`` on ``log_std``
  (``m`` the live mask, ``M = max(sum m, 1)``), with no cross term: the Gauss-Newton product.
* ``J_T = d theta'_T / d theta``: the chain of ``I - A H_k`` over the inner steps (transpose ``I - H_k A``),
  ``H_k`` the Hessian of task ``T``'s REINFORCE loss on step ``k``'s batch at the old ``k``-th inner point (``I``
  for ``first_order``). The term with ``d2 theta' / d theta2`` is multiplied by ``d KL1 / d theta' = 0`` at
  ``theta_old`` and drops out.

The mean network's Jacobian-vector, vector-Jacobian and the REINFORCE loss's Hessian-vector products
(Pearlmutter's R-operator) are written out by hand for the MLP of :class:`~rkmeta_rl.rl.policy.GaussianMLPPolicy`
on cached activations, one batched matmul per layer over ``[T, N, ...]``, so a Fisher-vector product costs a few
passes over the data instead of a double backward through a third-order graph.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ..rk.inner_step import StepSizes, inner_step, uniform_step
from .episodes import FlatBatch
from .policy import GaussianMLPPolicy, Params, per_task, per_task_linear
from .stage_weights import PerParam, scale
from .trpo import flatten, unflatten

__all__ = ["MLPCache", "GaussNewtonFVP", "supports_gauss_newton", "CHUNK_ROWS"]

#: Steps (rows) per chunk of tasks in a Fisher-vector product: keeps the ``[rows, hidden]`` activations in cache.
CHUNK_ROWS = 4096


def supports_gauss_newton(policy: object) -> bool:
    """Whether ``policy`` is the plain Gaussian MLP whose derivatives :class:`MLPCache` writes out."""
    return (isinstance(policy, GaussianMLPPolicy) and type(policy).mean is GaussianMLPPolicy.mean
            and type(policy).mean_log_std is GaussianMLPPolicy.mean_log_std
            and policy.activation in ("relu", "tanh"))


def _bt(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def _weight_grad(g: torch.Tensor, h: torch.Tensor, g2: torch.Tensor | None = None, h2: torch.Tensor | None = None,
                 scale: float = 1.0) -> torch.Tensor:
    """Per-task weight gradient ``g^T h (+ scale g2^T h2)``: ``[T, out, in]`` from ``g [T, N, out]``, ``h [T, N, in]``.

    A thin layer (``in < out``, e.g. the 2-wide input of 2D navigation) is computed as ``(h^T g)^T``: the same
    sums, but batched matrix multiplication is then several times faster than with the long dimension ``N``
    inside a ``[out, N] x [N, in]`` product of a narrow result."""
    if h.shape[-1] < g.shape[-1]:
        gw = torch.bmm(_bt(h), g)
        if g2 is not None and h2 is not None:
            gw.baddbmm_(_bt(h2), g2, alpha=scale)
        return _bt(gw)
    gw = torch.bmm(_bt(g), h)
    if g2 is not None and h2 is not None:
        gw.baddbmm_(_bt(g2), h2, alpha=scale)
    return gw


class MLPCache:
    """The mean network at fixed per-task parameters on one batch: layer inputs and activation derivatives.

    Args:
        policy: the Gaussian MLP policy.
        params: per-task parameters ``{name: [T, ...]}`` (detached).
        batch: the batch (``obs [T, N, obs_dim]``; its masks give the KL's masked-mean weights ``m / M``).
        reinforce: also cache the REINFORCE loss's cotangents (for its gradient and Hessian-vector product).
        curvature: with ``reinforce``, also cache the network's curvature terms of that Hessian-vector product
            (``tanh``: one ``[T, N, hidden]`` product per hidden layer); ``False`` when only the gradient is needed
            (:meth:`reinforce_grad`, e.g. the line search's inner step).
    """

    def __init__(self, policy: GaussianMLPPolicy, params: Mapping[str, torch.Tensor], batch: FlatBatch,
                 reinforce: bool, curvature: bool = True) -> None:
        self.num_layers = n = policy.num_layers
        self.ws = [params[f"w{i}"] for i in range(n)]
        bs = [params[f"b{i}"] for i in range(n)]
        self.log_std = params["log_std"]                     # [T, A]
        self.s2inv = torch.exp(-2.0 * self.log_std)          # [T, A]
        tanh = policy.activation == "tanh"
        h = batch.obs
        self.hs: list[torch.Tensor] = [h]                    # input of layer i
        self.dact: list[torch.Tensor] = []                   # act'(z_i), hidden layers
        one = torch.ones((), dtype=h.dtype, device=h.device)
        for i in range(n):
            z = per_task_linear(h, self.ws[i], bs[i])
            if i < n - 1:
                if tanh:
                    h = torch.tanh(z)
                    d = torch.addcmul(one, h, h, value=-1.0)  # 1 - h^2
                else:
                    h = torch.relu(z)
                    d = torch.sign(h)  # 1 where z > 0, else 0 (one pass; ``(z > 0).to(dtype)`` takes two)
                self.hs.append(h)
                self.dact.append(d)
            else:
                self.mu = z
        m = batch.masks
        count = m.sum(1, keepdim=True)
        self.kl_w = m / count.clamp_min(1.0)                 # [T, N]: masked-mean weights
        self.kl_wsum = self.kl_w.sum(1)                      # [T]
        if not reinforce:
            return
        # REINFORCE loss L = sum_n c_n (0.5 sum_d r^2 s2inv + sum_d log_std), c = m A / M, r = a - mu
        c = self.kl_w * batch.advantages                     # [T, N]
        self.c_sum = c.sum(1)                                # [T]
        r = batch.actions - self.mu
        self.c_s2inv = c.unsqueeze(-1) * self.s2inv.unsqueeze(1)             # [T, N, A]
        g = -self.c_s2inv * r                                                # dL/dmu
        self.g = g
        self.cz2_sum = (self.c_s2inv * r * r).sum(1)                         # [T, A]
        # cotangents of the pre-activations at this point, and the network's curvature: with tanh,
        # act'' = -2 h act', so gh * act''(z) * dz = -2 (h * gh) * dh along a direction (dh = act'(z) dz)
        self.curvature = curvature or not tanh  # ReLU has no curvature term (act'' = 0 almost everywhere)
        self.gz: list[torch.Tensor] = [g]  # gz[j] belongs to layer n-1-j
        self.hgh: list[torch.Tensor | None] = []
        gz = g
        for i in range(n - 1, 0, -1):
            gh = torch.bmm(gz, self.ws[i])
            self.hgh.append(self.hs[i] * gh if tanh and curvature else None)
            gz = gh.mul_(self.dact[i - 1])
            self.gz.append(gz)
        self.gz.reverse()    # gz[i]: layer i
        self.hgh.reverse()   # hgh[i]: hidden layer i (i = 0 .. n-2), output h_{i+1} times its cotangent

    def chunk(self, tasks: slice) -> "MLPCache":
        """The cache of the tasks ``tasks`` (views)."""
        out = object.__new__(MLPCache)
        for k, v in self.__dict__.items():
            if isinstance(v, torch.Tensor):
                v = v[tasks]
            elif isinstance(v, list):
                v = [None if x is None else x[tasks] for x in v]
            setattr(out, k, v)
        return out

    # ---- products ---------------------------------------------------------------------------------------
    def jvp(self, v: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(d mu [T, N, A], the hidden layers' outputs' d h_{i+1})`` along per-task ``v``."""
        dhs: list[torch.Tensor] = []
        dh = None
        for i in range(self.num_layers):
            dz = per_task_linear(self.hs[i], v[f"w{i}"], v[f"b{i}"], None if dh is None else (dh, self.ws[i]))
            if i < self.num_layers - 1:
                dh = self.dact[i] * dz
                dhs.append(dh)
            else:
                return dz, dhs
        raise AssertionError("unreachable")

    def vjp(self, gout: torch.Tensor, out: Params, v: Mapping[str, torch.Tensor] | None = None,
            dhs: Sequence[torch.Tensor] = (), scale: float = 1.0) -> Params:
        """Back-propagate the output cotangent ``gout [T, N, A]`` to the network's per-task parameters, into ``out``.

        With ``v`` (and the :meth:`jvp` intermediates along it), also add ``scale`` times the R-operator terms of
        the REINFORCE loss's back-propagation (the cotangents' own change along ``v``), which makes this the
        network part of that loss's Hessian-vector product when ``gout`` is ``R{dL/dmu}``.
        """
        g = gout
        for i in range(self.num_layers - 1, -1, -1):
            if v is not None and i > 0:
                gw = _weight_grad(g, self.hs[i], self.gz[i], dhs[i - 1], scale)
            else:
                gw = _weight_grad(g, self.hs[i])
            out[f"w{i}"] = gw
            out[f"b{i}"] = g.sum(1)
            if i > 0:
                gh = torch.bmm(g, self.ws[i])
                if v is not None:
                    gh.baddbmm_(self.gz[i], v[f"w{i}"], alpha=scale)
                gh.mul_(self.dact[i - 1])
                hgh = self.hgh[i - 1] if v is not None else None
                if hgh is not None:
                    gh.addcmul_(hgh, dhs[i - 1], value=-2.0 * scale)
                g = gh
        return out

    def reinforce_grad(self) -> Params:
        """The per-task gradient of the REINFORCE loss at the cached point (``reinforce=True``)."""
        out: Params = {}
        for i in range(self.num_layers):
            out[f"w{i}"] = _weight_grad(self.gz[i], self.hs[i])
            out[f"b{i}"] = self.gz[i].sum(1)
        out["log_std"] = self.c_sum.unsqueeze(-1) - self.cz2_sum
        return out

    def kl_hvp(self, v: Mapping[str, torch.Tensor], scale: torch.Tensor | float) -> Params:
        """``scale * F v`` per task: the Hessian at equality of the masked-mean Gaussian KL (Gauss-Newton).

        ``scale`` is a float or a per-task ``[T]`` tensor."""
        dmu, _ = self.jvp(v)
        out = self.vjp(self.kl_cotangent(dmu, scale), {})
        out["log_std"] = self.kl_log_std(v, scale)
        return out

    def kl_cotangent(self, dmu: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """The output cotangent ``scale * diag(m / M / sigma^2) d mu`` of :meth:`kl_hvp`: ``[T, N, A]``."""
        sc = torch.as_tensor(scale, dtype=dmu.dtype, device=dmu.device).reshape(-1, 1)
        return (self.kl_w * sc).unsqueeze(-1) * self.s2inv.unsqueeze(1) * dmu

    def kl_log_std(self, v: Mapping[str, torch.Tensor], scale: torch.Tensor | float) -> torch.Tensor:
        """The ``log_std`` block of :meth:`kl_hvp`: ``scale * 2 (sum m / M) v_log_std``, ``[T, A]``."""
        sc = torch.as_tensor(scale, dtype=v["log_std"].dtype, device=v["log_std"].device).reshape(-1, 1)
        return (2.0 * sc * self.kl_wsum.unsqueeze(-1)) * v["log_std"]

    def inner_jacobian(self, v: Mapping[str, torch.Tensor], alpha: StepSizes, transpose: bool = False) -> Params:
        """The inner step's Jacobian ``(I - A H) v`` per task (``transpose``: ``(I - H A) v``), ``H`` the Hessian of
        the REINFORCE loss at the cached point, ``A = diag(alpha_l)``; the two agree for one ``alpha``."""
        if transpose and uniform_step(alpha) is None:
            assert not isinstance(alpha, (int, float))
            hv = self._hvp({k: (x if float(alpha[k]) == 1.0 else float(alpha[k]) * x) for k, x in v.items()})
            return inner_step(v, hv, 1.0)
        return inner_step(v, self._hvp(v), alpha)

    def _hvp(self, v: Mapping[str, torch.Tensor], scale: float = 1.0, extra: torch.Tensor | None = None,
             jv: tuple[torch.Tensor, list[torch.Tensor]] | None = None) -> Params:
        """``scale * H v`` per task (the REINFORCE loss's Hessian at the cached point).

        Args:
            v: per-task direction.
            scale: a factor on the product (applied to the cotangents, not to the result: no extra pass).
            extra: an output cotangent ``[T, N, A]`` whose plain back-propagation is added to the network's
                parameters' blocks (one backward pass for both: :meth:`vjp` is linear in its cotangent).
            jv: :meth:`jvp` ``(d mu, d h)`` along ``v`` when the caller has it already.
        """
        if not getattr(self, "curvature", False):
            raise ValueError("MLPCache: the Hessian-vector product needs a cache built with reinforce=True, "
                             "curvature=True")
        dmu, dhs = self.jvp(v) if jv is None else jv
        vls = v["log_std"].unsqueeze(1)                                       # [T, 1, A]
        rg = self.c_s2inv * dmu - 2.0 * self.g * vls                          # R{dL/dmu}
        hls = 2.0 * self.cz2_sum * v["log_std"] - 2.0 * (self.g * dmu).sum(1)
        if scale != 1.0:
            rg, hls = scale * rg, scale * hls
        if extra is not None:
            rg = rg + extra
        hv = self.vjp(rg, {}, v, dhs, scale)
        hv["log_std"] = hls
        return hv


class GaussNewtonFVP:
    """The Fisher-vector product of the RK-weighted KL at ``theta_old`` (module docstring), undamped.

    Args:
        like: shared ``theta_old`` (its layout is that of the flat vectors).
        a1, a2: the stage weights; alpha: the inner step size (a float or ``{name: alpha_l}``).
        d0: the cache on D0 at ``theta_old`` (needed when ``a1 != 0``).
        inner: the caches (``reinforce=True``) of the inner steps at their old starting points, empty for
            ``J = I`` (first order).
        d1: the cache on D1 at the old adapted parameters (needed when ``a2 != 0``).
        scales: the per-parameter scales ``(W1, W2)`` of per-parameter methods (1.0: one method everywhere).

    :meth:`build` makes the caches.
    """

    def __init__(self, like: Mapping[str, torch.Tensor], a1: float, a2: float, alpha: StepSizes,
                 d0: MLPCache | None, inner: Sequence[MLPCache], d1: MLPCache | None,
                 chunk_rows: int = CHUNK_ROWS, scales: tuple[PerParam, PerParam] = (1.0, 1.0)) -> None:
        self.names = list(like)
        self.like = {k: v.detach() for k, v in like.items()}
        self.a1, self.a2 = float(a1), float(a2)
        self.alpha: StepSizes = alpha if isinstance(alpha, Mapping) else float(alpha)
        self.scales = scales
        self.d0 = d0 if self.a1 != 0.0 else None
        self.inner = list(inner) if self.a2 != 0.0 else []
        self.d1 = d1 if self.a2 != 0.0 else None
        if (self.a1 != 0.0 and d0 is None) or (self.a2 != 0.0 and d1 is None):
            raise ValueError("missing cache for a non-zero stage weight")
        ref = d0 if d0 is not None else d1
        assert ref is not None
        self.n_tasks, rows = ref.mu.shape[0], max(c.mu.shape[1] for c in (d0, d1, *inner) if c is not None)
        # tasks are independent until the final sum: run them in chunks whose activations stay in cache
        per = max(1, min(self.n_tasks, chunk_rows // max(rows, 1)))
        self.chunks = []
        for start in range(0, self.n_tasks, per):
            sl = slice(start, min(start + per, self.n_tasks))
            inner_sl = [c.chunk(sl) for c in self.inner]
            # a D0 cache that is the first inner step's stays one object (:meth:`_chunk_shared_d0`)
            d0_sl = None if self.d0 is None else (inner_sl[0] if self.inner and self.inner[0] is self.d0
                                                  else self.d0.chunk(sl))
            self.chunks.append((sl.stop - sl.start, d0_sl, inner_sl, None if self.d1 is None else self.d1.chunk(sl)))

    @classmethod
    def build(cls, policy: GaussianMLPPolicy, theta: Mapping[str, torch.Tensor], train: Sequence[FlatBatch],
              valid: FlatBatch | None, adapted: Sequence[Params], a1: float, a2: float, alpha: StepSizes,
              first_order: bool, scales: tuple[PerParam, PerParam] = (1.0, 1.0)) -> "GaussNewtonFVP":
        """From ``theta_old``, the (already subsampled) inner-step batches ``train`` (only the first is used when
        ``a2 == 0``) and D1 ``valid``, and the old inner points ``adapted`` (``theta'_1 .. theta'_n`` per task)."""
        like = {k: v.detach() for k, v in theta.items()}
        theta_t = per_task(like, train[0].num_tasks)
        inner: list[MLPCache] = []
        d1 = d0 = None
        if a2 != 0.0:
            assert valid is not None
            starts = [theta_t, *adapted[:-1]]
            if not first_order:
                inner = [MLPCache(policy, p, b, reinforce=True) for p, b in zip(starts, train)]
            d1 = MLPCache(policy, adapted[len(train) - 1], valid, reinforce=False)
        if a1 != 0.0:
            # same batch, same point as the first inner step: share the forward pass
            d0 = inner[0] if inner else MLPCache(policy, theta_t, train[0], reinforce=False)
        return cls(like, a1, a2, alpha, d0, inner, d1, scales=scales)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``F v`` for a flat ``v [P]`` (no damping)."""
        vd = unflatten(v, self.like)
        total: Params = {}
        for n, d0, inner, d1 in self.chunks:
            part = self._chunk(per_task(vd, n), d0, inner, d1)
            for k in self.names:
                s = part[k].sum(0)
                total[k] = s if k not in total else total[k] + s
        return flatten([total[k] for k in self.names])

    def _chunk(self, vt: Params, d0: MLPCache | None, inner: Sequence[MLPCache], d1: MLPCache | None) -> Params:
        """Per-task ``F_T v`` of a chunk of tasks."""
        total: Params | None = None
        s1, s2 = self.scales
        a = uniform_step(self.alpha)
        if (d0 is not None and d1 is not None and inner and inner[0] is d0 and s1 == 1.0 and s2 == 1.0
                and a is not None):
            return self._chunk_shared_d0(vt, d0, inner, d1, a)
        if d0 is not None:
            total = scale(d0.kl_hvp(scale(vt, s1), self.a1 / self.n_tasks), s1)
        if d1 is not None:
            u: Params = scale(vt, s2)
            for cache in inner:
                u = cache.inner_jacobian(u, self.alpha)
            w = d1.kl_hvp(u, self.a2 / self.n_tasks)
            for cache in reversed(inner):
                w = cache.inner_jacobian(w, self.alpha, transpose=True)
            w = scale(w, s2)
            total = w if total is None else {k: total[k] + w[k] for k in total}
        assert total is not None
        return total

    def _chunk_shared_d0(self, vt: Params, d0: MLPCache, inner: Sequence[MLPCache], d1: MLPCache, alpha: float
                         ) -> Params:
        """:meth:`_chunk` when ``a1 F0`` and the first inner step use the same cache (one method everywhere,
        second order): ``a1 F0 v + J^T (a2 F1) J v`` with ``F0``'s Jacobian-vector product shared with the first
        ``H v`` and ``F0``'s backward pass merged into that of the last ``H^T w`` (``J_1^T w = w - alpha H w``):
        16 products of the widest layer instead of the general form's 20, the same sums up to rounding."""
        c1 = self.a1 / self.n_tasks
        jv = d0.jvp(vt)
        u = inner_step(vt, d0._hvp(vt, jv=jv), alpha)
        for cache in inner[1:]:
            u = cache.inner_jacobian(u, alpha)
        w = d1.kl_hvp(u, self.a2 / self.n_tasks)
        for cache in reversed(inner[1:]):
            w = cache.inner_jacobian(w, alpha, transpose=True)
        back = d0._hvp(w, scale=-alpha, extra=d0.kl_cotangent(jv[0], c1))  # -alpha H w + (a1 F0 v) on the net
        out = {k: w[k] + back[k] for k in w}
        out["log_std"] = out["log_std"] + d0.kl_log_std(vt, c1)
        return out
