"""MAML-TRPO with Runge-Kutta weighted objectives (docs/meta_rl.md).

Per task ``T`` of the meta-batch (Finn et al., 2017, MAML; Im, Jiang and Verma, 2019, MAML-RK; Schulman et al.,
2015, TRPO)::

    L_S(theta; D)  = -mean_{live steps of D} log pi_theta(a|s) * A                  REINFORCE inner loss
    theta'         = theta - alpha grad L_S(theta; D0)                              alpha = tableau.inner_lr(...)
                     (repeated inner_steps times, step k on fresh episodes D0^(k) sampled with theta'_k)
    surr(pi; D)    = -mean_{live steps of D} pi(a|s) / pi_old(a|s) * A
    J(theta)       = mean_T [ a1 surr(pi_theta; D0) + a2 surr(pi_theta'(theta); D1) ]
    KL(theta)      = mean_T [ a1 KL(pi_theta_old || pi_theta; D0) + a2 KL(pi_theta'_old || pi_theta'(theta); D1) ]

``theta'(theta)`` is differentiated through (``create_graph``), so the gradient of ``J`` and the Fisher-vector
product (the Hessian-vector product of ``KL`` at ``theta_old``) include the inner step's second-order terms;
``first_order=True`` treats the inner gradients as constants. A one-stage tableau (``euler``) has ``a = (1,)``:
``J`` and ``KL`` are those of plain TRPO on the pre-adaptation policy, and nothing is adapted. ``midpoint``
(``a = (0, 1)``) is MAML-TRPO exactly.

Per-parameter methods and ``adapt=`` (:mod:`rkmeta_rl.rk.method_spec`): the inner step moves group ``l`` by its own
``alpha_l``, and ``J``, ``KL`` become the per-group forms of :mod:`rkmeta_rl.rl.stage_weights` (stage ``i`` at
``theta_old + W_i (theta - theta_old)``), whose gradient is the per-group RK gradient and whose Hessian is symmetric.

All tasks are processed at once: shared parameters are expanded to per-task views ``[T, ...]``, the per-task
inner gradients are the gradient of the sum of per-task losses w.r.t. those views, and every forward pass is one
batched matmul per layer over ``[T, N, ...]`` (``N = H x B`` steps per task).

Passes over the data per meta-update (one inner step, ``fvp_subsample = s``; F a forward pass, B the REINFORCE
gradient's backward pass, HVP that loss's Hessian-vector product, GN a Gauss-Newton Fisher product; counts and
measurements in docs/meta_rl.md, "What a meta-iteration costs"): the adaptation F+B on D0 (kept by :meth:`adapt`
for :meth:`prepare`); the preparation F+B on D1 and one HVP on D0 (``J^T grad S1``), plus the Fisher caches on the
subsample; conjugate gradient ``cg_iters`` Fisher-vector products of ``s (2 HVP + GN)`` each, the step scaling
none (CG's own products); each line-search try F+B on D0 and F on D1, without autograd.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import torch

from ..rk import AdaptSpec, MethodMap, MethodSpec, Tableau, inner_step, method_name, parse_adapt, resolve_groups
from ..rk.inner_step import StepSizes
from .episodes import FlatBatch
from .fisher import GaussNewtonFVP, MLPCache, supports_gauss_newton
from .policy import GaussianMLPPolicy, Params, gaussian_kl, gaussian_log_prob, is_per_task, per_task
from .stage_weights import scale, scaled_point, stage_weights
from .trpo import TRPOStats, flatten, trpo_update, unflatten

__all__ = ["MetaTRPOStep", "Prepared", "Reducer", "reinforce_loss", "surrogate_loss", "kl_to"]

#: ``tensors -> tensors``: the data-parallel (task-count weighted) mean over processes of per-process means.
Reducer = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]


def reinforce_loss(policy: GaussianMLPPolicy, params: Mapping[str, torch.Tensor], batch: FlatBatch) -> torch.Tensor:
    """Per-task REINFORCE loss ``-mean(log pi * A)`` over live steps: ``[T]``."""
    logp = policy.log_prob(params, batch.obs, batch.actions)
    return -batch.masked_mean(logp * batch.advantages)


def surrogate_loss(logp: torch.Tensor, old_logp: torch.Tensor, batch: FlatBatch) -> torch.Tensor:
    """Per-task surrogate ``-mean(exp(logp - old_logp) * A)`` over live steps: ``[T]`` (``logp [T, N]``)."""
    return -batch.masked_mean(torch.exp(logp - old_logp) * batch.advantages)


def kl_to(mu_old: torch.Tensor, ls_old: torch.Tensor, mu: torch.Tensor, ls: torch.Tensor, batch: FlatBatch
          ) -> torch.Tensor:
    """Per-task mean over live steps of ``KL(N(mu_old, e^ls_old) || N(mu, e^ls))`` (summed over action dims): ``[T]``.

    Shapes: ``mu_old, mu [T, N, act_dim]``; ``ls_old, ls`` broadcastable to them.
    """
    return batch.masked_mean(gaussian_kl(mu_old, ls_old, mu, ls))


@dataclass
class _Old:
    """Quantities at ``theta_old`` (detached): log-probs and Gaussian parameters on D0 and D1."""

    logp0: torch.Tensor
    mu0: torch.Tensor
    ls0: torch.Tensor
    logp1: torch.Tensor | None
    mu1: torch.Tensor | None
    ls1: torch.Tensor | None
    adapted: list[Params]  # theta'_1 .. theta'_n at theta_old (per task, detached)
    theta: Params          # theta_old (shared, detached)


@dataclass
class _AdaptMemo:
    """The first inner step that :meth:`MetaTRPOStep.adapt` took from shared ``theta`` on ``batch``: its cache
    (:class:`MLPCache`, ``reinforce=True``) and result, for :meth:`MetaTRPOStep.prepare` at the same point."""

    theta: Params
    batch: FlatBatch
    cache: MLPCache
    adapted: Params

    def __post_init__(self) -> None:
        self.version = self.batch_version(self.batch)

    @staticmethod
    def batch_version(batch: FlatBatch) -> tuple[int, ...]:
        """The batch tensors' in-place modification counters (a changed batch is not reused)."""
        return tuple(t._version for t in (batch.obs, batch.actions, batch.advantages, batch.masks))


class MetaTRPOStep:
    """The RK-weighted MAML-TRPO meta-update.

    Args:
        policy: the Gaussian MLP policy (used functionally).
        method: tableau name / number / :class:`~rkmeta_rl.rk.Tableau` with one or two stages; or per-parameter
            methods, an ordered ``{glob: method}`` mapping or its string form ``"w2|b2|log_std=midpoint,*=ralston"``
            over the policy's parameter names (:mod:`rkmeta_rl.rl.policy`). The per-group objective and KL are
            those of :mod:`rkmeta_rl.rl.stage_weights`.
        inner_lr: MAML's inner learning rate; the method adapts with ``tableau.inner_lr(inner_lr, step_rule)``
            (``midpoint``: exactly ``inner_lr``).
        inner_steps: inner gradient steps (each on its own batch of train episodes).
        step_rule: ``"tableau"`` or ``"fixed"`` (docs/method.md).
        first_order: treat the inner gradients as constants (FOMAML-style) in ``J`` and ``KL``.
        max_kl, cg_iters, cg_damping, ls_backtrack_ratio, ls_max_steps: TRPO settings.
        fvp_subsample: fraction of each task's steps (every ``round(1/f)``-th) on which the Fisher-vector
            product is computed (:meth:`subsampled_kl`). 1.0 (default) is exact. Below 1 only the trust-region
            metric is estimated (OpenAI Baselines' TRPO uses every 5th sample); the gradient, the line search's
            objective and its ``KL <= max_kl`` test stay on all the data.
        adapt: the parameters the inner step moves (globs; default all; ANIL: ``policy.head_pattern``).
        fvp_mode: ``"gauss_newton"`` (default): the Fisher-vector product from its structure at ``theta_old``,
            ``a1 F0 + a2 mean_T J^T F1 J`` with hand-written Jacobian-, Hessian- and Gauss-Newton-vector products
            (:mod:`rkmeta_rl.rl.fisher`); ``"autograd"``: the reference double backward through
            ``grad(KL, create_graph=True)``. Both are the same exact product (up to rounding); policies other than
            the plain :class:`~rkmeta_rl.rl.policy.GaussianMLPPolicy` always use ``"autograd"``.
    """

    def __init__(self, policy: GaussianMLPPolicy, method: MethodSpec | MethodMap = "midpoint", inner_lr: float = 0.1,
                 inner_steps: int = 1, step_rule: str = "tableau", first_order: bool = False, max_kl: float = 0.01,
                 cg_iters: int = 10, cg_damping: float = 1e-5, ls_backtrack_ratio: float = 0.8,
                 ls_max_steps: int = 15, fvp_subsample: float = 1.0, fvp_mode: str = "gauss_newton", *,
                 adapt: AdaptSpec = None) -> None:
        self.policy = policy
        self.groups = resolve_groups(list(policy.params()), method, adapt)
        #: the common tableau (``None`` for per-parameter methods)
        self.tableau: Tableau | None = self.groups.tableau
        #: the method's canonical label (a tableau name or ``"glob=method,..."``)
        self.method_name = method_name(method)
        self.adapt_patterns = parse_adapt(adapt)
        if self.groups.stages > 2:
            raise ValueError(f"MAML-TRPO supports one- and two-stage tableaus; {self.method_name} has "
                             f"{self.groups.stages} stages")
        if not (math.isfinite(inner_lr) and inner_lr > 0):
            raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
        if int(inner_steps) < 1:
            raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
        self.inner_lr = float(inner_lr)
        self.step_rule = step_rule
        self.weights = stage_weights(self.groups, self.inner_lr, step_rule)
        #: the inner step sizes: one float (one method, every parameter adapted) or ``{name: alpha_l}``
        self.alpha: float | dict[str, float] = self.weights.alpha  # type: ignore[assignment]
        self.inner_steps = int(inner_steps)
        self.first_order = bool(first_order)
        self.max_kl = float(max_kl)
        self.cg_iters = int(cg_iters)
        self.cg_damping = float(cg_damping)
        self.ls_backtrack_ratio = float(ls_backtrack_ratio)
        self.ls_max_steps = int(ls_max_steps)
        if not 0.0 < fvp_subsample <= 1.0:
            raise ValueError(f"fvp_subsample must be in (0, 1], got {fvp_subsample}")
        self.fvp_stride = max(1, int(round(1.0 / fvp_subsample)))
        if fvp_mode not in ("gauss_newton", "autograd"):
            raise ValueError(f"fvp_mode must be 'gauss_newton' or 'autograd', got {fvp_mode!r}")
        self.fvp_mode = fvp_mode
        #: scalar stage weights ``w1, w2`` (the tableau's ``a1, a2`` for one method everywhere), and the
        #: per-parameter scales ``W1, W2`` of :mod:`rkmeta_rl.rl.stage_weights` (1.0 for one method everywhere)
        self.a1, self.a2 = self.weights.w
        self.scales = self.weights.scales
        self._memo: _AdaptMemo | None = None

    @property
    def adapts(self) -> bool:
        """Whether the meta-objective has a post-adaptation stage (some two-stage tableau)."""
        return self.groups.stages == 2

    # ---- inner adaptation -------------------------------------------------------------------------
    def adapt(self, params: Mapping[str, torch.Tensor], train: Sequence[FlatBatch], create_graph: bool = False,
              alpha: StepSizes | None = None) -> Params:
        """Per-task inner adaptation ``theta'_{k+1} = theta'_k - alpha grad L_S(theta'_k; train[k])`` (per group).

        Args:
            params: shared (or per-task) parameters ``theta``.
            train: one batch per inner step (all with ``T`` tasks).
            create_graph: keep the graph so the result is differentiable w.r.t. ``params`` (second order);
                otherwise the result is detached.
            alpha: step size: a float for every parameter or ``{name: alpha_l}`` (default: the method's,
                :attr:`alpha`).

        Returns:
            per-task parameters ``{name: [T, ...]}``.
        """
        lr = self.alpha if alpha is None else (alpha if isinstance(alpha, Mapping) else float(alpha))
        n_tasks = train[0].num_tasks
        if not create_graph and supports_gauss_newton(self.policy):
            return self._adapt_direct(params, train, lr)
        if create_graph:
            cur = per_task(params, n_tasks)
        else:
            detached = per_task({k: v.detach() for k, v in params.items()}, n_tasks)
            cur = {k: v.clone().requires_grad_(True) for k, v in detached.items()}
        for batch in train:
            with torch.enable_grad():
                loss = reinforce_loss(self.policy, cur, batch).sum()  # per-task losses are independent
                grads = torch.autograd.grad(loss, list(cur.values()), create_graph=create_graph and not
                                            self.first_order)
            cur = inner_step(cur, grads, lr)
            if not create_graph:
                cur = {k: v.detach().requires_grad_(True) for k, v in cur.items()}
        return {k: v if create_graph else v.detach() for k, v in cur.items()}

    def _adapt_direct(self, params: Mapping[str, torch.Tensor], train: Sequence[FlatBatch], lr: StepSizes
                      ) -> Params:
        """:meth:`adapt` without autograd (detached result): the REINFORCE gradients of :class:`MLPCache`.

        The first step from shared parameters with the method's own step sizes is remembered (its cache and
        result), so that :meth:`prepare` at the same ``theta_old`` on the same D0 reuses it instead of making
        the same forward and backward pass again (:class:`_AdaptMemo`)."""
        shared = {k: v.detach() for k, v in params.items()}
        # copies, not views of params: a parameter the method does not adapt (alpha_l = 0) is returned as is
        cur = {k: v.clone() for k, v in per_task(shared, train[0].num_tasks).items()}
        memo = None
        for k, batch in enumerate(train):
            cache = MLPCache(self.policy, cur, batch, reinforce=True)
            cur = inner_step(cur, cache.reinforce_grad(), lr)
            if k == 0 and lr is self.alpha and not is_per_task(shared):
                memo = _AdaptMemo({n: v.clone() for n, v in shared.items()}, batch, cache, cur)
        if memo is not None:
            self._memo = memo
        return cur

    def _take_memo(self, theta: Mapping[str, torch.Tensor], d0: FlatBatch) -> "_AdaptMemo | None":
        """The remembered first inner step when it was taken at ``theta`` on ``d0`` (then forgotten)."""
        memo, self._memo = self._memo, None
        if memo is None or memo.batch is not d0 or memo.version != memo.batch_version(d0):
            return None
        if any(not torch.equal(memo.theta[k], theta[k]) for k in theta):
            return None
        return memo

    # ---- the RK-weighted objective ------------------------------------------------------------------
    def objective(self, theta: Mapping[str, torch.Tensor], train: Sequence[FlatBatch], valid: FlatBatch | None,
                  old: _Old | None, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor, _Old]:
        """``(J, KL, quantities at theta)`` for shared parameters ``theta`` (docs/meta_rl.md).

        With ``old=None`` the old policy is ``theta`` itself (``J`` is then ``-a1 mean A - a2 mean A`` and
        ``KL = 0``, but both keep their graphs for the gradient and the Fisher-vector product). Per-parameter
        methods evaluate stage ``i`` at ``theta_old + W_i (theta - theta_old)`` (:mod:`rkmeta_rl.rl.stage_weights`).
        """
        d0 = train[0]
        n_tasks = d0.num_tasks
        base = old.theta if old is not None else {k: v.detach() for k, v in theta.items()}
        sc1, sc2 = self.scales
        theta_t = per_task(scaled_point(theta, base, sc1), n_tasks)
        mu0, ls0 = self.policy.mean_log_std(theta_t, d0.obs)
        logp0 = gaussian_log_prob(mu0, ls0, d0.actions)
        j = torch.zeros((), dtype=mu0.dtype, device=mu0.device)
        kl = torch.zeros((), dtype=mu0.dtype, device=mu0.device)
        if old is None:
            old_logp0, old_mu0, old_ls0 = logp0.detach(), mu0.detach(), ls0.detach()
        else:
            old_logp0, old_mu0, old_ls0 = old.logp0, old.mu0, old.ls0
        if self.a1 != 0.0:
            j = j + self.a1 * surrogate_loss(logp0, old_logp0, d0).mean()
            kl = kl + self.a1 * kl_to(old_mu0, old_ls0, mu0, ls0, d0).mean()
        logp1 = mu1 = ls1 = None
        adapted: list[Params] = []
        if self.adapts:
            if valid is None:
                raise ValueError(f"{self.method_name} adapts: valid episodes (D1) are required")
            second = create_graph and not self.first_order
            if sc2 == sc1:
                # inner step 1 reuses the forward pass on D0 above
                start, logp_start = theta_t, logp0
            else:  # stage 2 starts from its own scaled point
                start = per_task(scaled_point(theta, base, sc2), n_tasks)
                logp_start = self.policy.log_prob(start, d0.obs, d0.actions)
            inner0 = -d0.masked_mean(logp_start * d0.advantages).sum()
            # the D0 forward pass is shared with the a1 terms: keep it when they are differentiated
            g0 = torch.autograd.grad(inner0, list(start.values()), create_graph=second, retain_graph=create_graph)
            cur = inner_step(start, g0, self.alpha)
            adapted.append({k: v.detach() for k, v in cur.items()})
            for batch in train[1:]:
                lk = reinforce_loss(self.policy, cur, batch).sum()
                gk = torch.autograd.grad(lk, list(cur.values()), create_graph=second)
                cur = inner_step(cur, gk, self.alpha)
                adapted.append({k: v.detach() for k, v in cur.items()})
            with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):  # no graph for evaluations
                mu1, ls1 = self.policy.mean_log_std(cur, valid.obs)
                logp1 = gaussian_log_prob(mu1, ls1, valid.actions)
            if old is None:
                old_logp1, old_mu1, old_ls1 = logp1.detach(), mu1.detach(), ls1.detach()
            else:
                assert old.logp1 is not None and old.mu1 is not None and old.ls1 is not None
                old_logp1, old_mu1, old_ls1 = old.logp1, old.mu1, old.ls1
            with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
                j = j + self.a2 * surrogate_loss(logp1, old_logp1, valid).mean()
                kl = kl + self.a2 * kl_to(old_mu1, old_ls1, mu1, ls1, valid).mean()
        here = _Old(logp0.detach(), mu0.detach(), ls0.detach(),
                    None if logp1 is None else logp1.detach(), None if mu1 is None else mu1.detach(),
                    None if ls1 is None else ls1.detach(), adapted, {k: v.detach() for k, v in theta.items()})
        return j, kl, here

    def objective_direct(self, theta: Mapping[str, torch.Tensor], train: Sequence[FlatBatch],
                         valid: FlatBatch | None, old: _Old) -> tuple[torch.Tensor, torch.Tensor]:
        """``(J, KL)`` at shared ``theta`` against ``old``, without autograd: :meth:`objective`'s values
        (``create_graph=False``), from the same forward passes, with the inner steps' REINFORCE gradients written
        out (:class:`MLPCache`) instead of taken by autograd. The line search's evaluation: per candidate one
        forward and one backward pass over each inner-step batch and one forward pass over D1 (the D0 pass is
        shared by the ``a1`` terms and the first inner step when ``W1 = W2``).

        Only for :func:`~rkmeta_rl.rl.fisher.supports_gauss_newton` policies; ``theta`` detached.
        """
        d0 = train[0]
        n_tasks = d0.num_tasks
        sc1, sc2 = self.scales
        theta_t = per_task(scaled_point(theta, old.theta, sc1), n_tasks)
        j = torch.zeros((), dtype=old.mu0.dtype, device=old.mu0.device)
        kl = torch.zeros((), dtype=old.mu0.dtype, device=old.mu0.device)
        share = self.adapts and sc2 == sc1  # the first inner step starts from theta_1 on D0: one pass for both
        c0 = MLPCache(self.policy, theta_t, d0, reinforce=True, curvature=False) if share else None
        if self.a1 != 0.0:
            mu0 = c0.mu if c0 is not None else self.policy.mean(theta_t, d0.obs)
            ls0 = GaussianMLPPolicy._log_std(theta_t, mu0.dim() - 1)
            j = j + self.a1 * surrogate_loss(gaussian_log_prob(mu0, ls0, d0.actions), old.logp0, d0).mean()
            kl = kl + self.a1 * kl_to(old.mu0, old.ls0, mu0, ls0, d0).mean()
        if self.adapts:
            if valid is None:
                raise ValueError(f"{self.method_name} adapts: valid episodes (D1) are required")
            assert old.logp1 is not None and old.mu1 is not None and old.ls1 is not None
            cur = theta_t if share else per_task(scaled_point(theta, old.theta, sc2), n_tasks)
            for k, batch in enumerate(train):
                ck = c0 if k == 0 and c0 is not None else MLPCache(self.policy, cur, batch, reinforce=True,
                                                                   curvature=False)
                cur = inner_step(cur, ck.reinforce_grad(), self.alpha)
            mu1, ls1 = self.policy.mean_log_std(cur, valid.obs)
            j = j + self.a2 * surrogate_loss(gaussian_log_prob(mu1, ls1, valid.actions), old.logp1, valid).mean()
            kl = kl + self.a2 * kl_to(old.mu1, old.ls1, mu1, ls1, valid).mean()
        return j, kl

    def subsampled_kl(self, theta: Mapping[str, torch.Tensor], train: Sequence[FlatBatch], valid: FlatBatch | None,
                      old: _Old, stride: int) -> torch.Tensor:
        """The weighted KL on every ``stride``-th step of each task, for the Fisher-vector product only.

        The inner step is rebuilt on the subsample *around the old adapted parameters*::

            theta'_sub(theta) = theta'_old + (theta - theta_old) - alpha (g_sub(theta) - g_sub(theta_old))

        (chained the same way for several inner steps; ``alpha`` per group), which equals ``theta'_old`` at
        ``theta_old`` and has the Jacobian ``I - alpha H_sub`` there, so the Hessian of this KL at ``theta_old`` is
        ``a1 F0_sub + a2 mean_T J_sub^T F1_sub J_sub`` (with the scales ``W_i`` of per-parameter methods on both
        sides): the exact Fisher-vector product of the subsampled data
        (with ``stride=1``, exactly that of :meth:`objective`). ``old`` holds ``theta_old``.
        """
        def sub(b: FlatBatch) -> FlatBatch:
            return FlatBatch(b.obs[:, ::stride], b.actions[:, ::stride], b.advantages[:, ::stride],
                             b.masks[:, ::stride])

        d0 = sub(train[0])
        kl = torch.zeros((), dtype=old.mu0.dtype, device=old.mu0.device)
        if self.a1 != 0.0:
            theta_t = per_task(scaled_point(theta, old.theta, self.scales[0]), d0.num_tasks)
            mu0, ls0 = self.policy.mean_log_std(theta_t, d0.obs)
            kl = kl + self.a1 * kl_to(old.mu0[:, ::stride], old.ls0, mu0, ls0, d0).mean()
        if self.adapts:
            assert valid is not None and old.mu1 is not None and old.ls1 is not None
            cur = per_task(scaled_point(theta, old.theta, self.scales[1]), d0.num_tasks)
            for k, batch in enumerate(train):
                b = sub(batch)
                start = per_task(old.theta, d0.num_tasks) if k == 0 else old.adapted[k - 1]
                start = {n: v.detach().clone().requires_grad_(True) for n, v in start.items()}
                g_start = torch.autograd.grad(reinforce_loss(self.policy, start, b).sum(), list(start.values()))
                lk = reinforce_loss(self.policy, cur, b).sum()
                gk = torch.autograd.grad(lk, list(cur.values()), create_graph=not self.first_order)
                cur = inner_step({n: old.adapted[k][n] + (v - start[n].detach()) for n, v in cur.items()},
                                 [g - gs for g, gs in zip(gk, g_start)], self.alpha)
            d1 = sub(valid)
            mu1, ls1 = self.policy.mean_log_std(cur, d1.obs)
            kl = kl + self.a2 * kl_to(old.mu1[:, ::stride], old.ls1, mu1, ls1, d1).mean()
        return kl

    def gauss_newton_fvp(self, train: Sequence[FlatBatch], valid: FlatBatch | None, old: _Old, stride: int
                         ) -> GaussNewtonFVP:
        """The undamped Fisher-vector product ``v -> H v`` of the weighted KL at ``old.theta`` on every
        ``stride``-th step (the Hessian of :meth:`subsampled_kl`, of :meth:`objective`'s KL for ``stride=1``),
        from its Gauss-Newton structure (:mod:`rkmeta_rl.rl.fisher`)."""
        def sub(b: FlatBatch) -> FlatBatch:
            if stride == 1:
                return b
            return FlatBatch(b.obs[:, ::stride], b.actions[:, ::stride], b.advantages[:, ::stride],
                             b.masks[:, ::stride])

        batches = [sub(b) for b in (train if self.adapts else train[:1])]
        d1 = sub(valid) if self.adapts and valid is not None else None
        return GaussNewtonFVP.build(self.policy, old.theta, batches, d1, old.adapted, self.a1, self.a2, self.alpha,
                                    self.first_order, scales=self.scales)

    def _prepare_gauss_newton(self, theta: Params, train: Sequence[FlatBatch], valid: FlatBatch | None
                              ) -> tuple[float, torch.Tensor, _Old, GaussNewtonFVP]:
        """``(J, grad J, old quantities, Fisher-vector product)`` at ``theta_old = theta`` without autograd.

        At ``theta_old`` every ratio ``pi / pi_old`` is 1, so the gradient of ``surr(pi; D)`` is that of the
        REINFORCE loss on ``D``, and ``grad J = mean_T [a1 W1 grad L_S(theta; D0) + a2 W2 J^T grad L_S(theta'; D1)]``
        with ``J^T`` the inner steps' ``I - H alpha`` in reverse (``W_i = 1`` for one method everywhere). The
        forward passes, the D0 and D1 cotangents and the inner steps' Hessian-vector caches are those of the
        Fisher-vector product (:mod:`rkmeta_rl.rl.fisher`), shared when ``fvp_subsample`` is 1. The old
        quantities equal :meth:`objective`'s (the forward passes are the same operations; the inner gradients agree
        to rounding).
        """
        d0 = train[0]
        n_tasks = d0.num_tasks
        memo = self._take_memo(theta, d0)
        theta_t = per_task(theta, n_tasks)
        c0 = memo.cache if memo is not None else MLPCache(self.policy, theta_t, d0, reinforce=True)
        mu0, ls0 = c0.mu, GaussianMLPPolicy._log_std(theta_t, c0.mu.dim() - 1)
        logp0 = gaussian_log_prob(mu0, ls0, d0.actions)
        j = torch.zeros((), dtype=mu0.dtype, device=mu0.device)
        grad: Params | None = None
        if self.a1 != 0.0:
            j = j + self.a1 * surrogate_loss(logp0, logp0, d0).mean()
            grad = scale({k: self.a1 / n_tasks * v for k, v in c0.reinforce_grad().items()}, self.scales[0])
        logp1 = mu1 = ls1 = None
        adapted: list[Params] = []
        inner: list[MLPCache] = []
        c1 = None
        if self.adapts:
            if valid is None:
                raise ValueError(f"{self.method_name} adapts: valid episodes (D1) are required")
            cur: Params = theta_t
            for k, batch in enumerate(train):
                ck = c0 if k == 0 else MLPCache(self.policy, cur, batch, reinforce=True)
                inner.append(ck)
                if k == 0 and memo is not None:  # the same pass and step as :meth:`adapt`'s: reuse them
                    cur = memo.adapted
                else:
                    cur = inner_step(cur, ck.reinforce_grad(), self.alpha)
                adapted.append(cur)
            c1 = MLPCache(self.policy, cur, valid, reinforce=True, curvature=False)  # no Hessian on D1
            mu1, ls1 = c1.mu, GaussianMLPPolicy._log_std(cur, c1.mu.dim() - 1)
            logp1 = gaussian_log_prob(mu1, ls1, valid.actions)
            j = j + self.a2 * surrogate_loss(logp1, logp1, valid).mean()
            if self.first_order:
                inner = []
            g1 = c1.reinforce_grad()
            for ck in reversed(inner):
                g1 = ck.inner_jacobian(g1, self.alpha, transpose=True)
            g1 = scale({k: self.a2 / n_tasks * v for k, v in g1.items()}, self.scales[1])
            grad = g1 if grad is None else {k: grad[k] + g1[k] for k in grad}
        assert grad is not None
        flat_grad = flatten([grad[k].sum(0) for k in theta])
        old = _Old(logp0, mu0, ls0, logp1, mu1, ls1, adapted, theta)
        if self.fvp_stride == 1:
            fisher = GaussNewtonFVP(theta, self.a1, self.a2, self.alpha, c0, inner, c1, scales=self.scales)
        else:
            fisher = self.gauss_newton_fvp(train, valid, old, self.fvp_stride)
        return float(j.item()), flat_grad, old, fisher

    # ---- the meta-update ---------------------------------------------------------------------------
    def prepare(self, params: Mapping[str, torch.Tensor], train: Sequence[FlatBatch], valid: FlatBatch | None,
                reduce: Reducer | None = None) -> "Prepared":
        """Everything TRPO needs at ``theta_old = params``: loss, gradient, Fisher-vector product, evaluator.

        Args:
            params: ``theta_old``.
            train, valid: this process's episodes.
            reduce: data parallelism: ``tensors -> tensors`` averaging over the processes, weighted by
                their task counts (:func:`rkmeta_rl.distributed.all_reduce_mean`). The loss, the gradient, every
                undamped Fisher-vector product and the line search's ``(J, KL)`` are means over this process's
                tasks; passed through ``reduce`` they are the means over the whole meta-batch, identical on
                every process, so CG and the line search take the same decisions everywhere. ``None``: one
                process.
        """
        names = list(params)
        theta = {k: params[k].detach().clone().requires_grad_(True) for k in names}
        leaves = [theta[k] for k in names]
        if self.fvp_mode == "gauss_newton" and supports_gauss_newton(self.policy):
            with torch.no_grad():
                loss, g, old, fisher = self._prepare_gauss_newton({k: v.detach() for k, v in theta.items()}, train,
                                                                  valid)

            def fvp(v: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    fv = fisher(v)
                    if reduce is not None:
                        fv = reduce([fv])[0]
                    return fv + self.cg_damping * v
        else:
            with torch.enable_grad():
                j_old, kl_old, old = self.objective(theta, train, valid, None, create_graph=True)
                grads = torch.autograd.grad(j_old, leaves, retain_graph=self.fvp_stride == 1, allow_unused=True)
                g = flatten([torch.zeros_like(w) if gi is None else gi for w, gi in zip(leaves, grads)]).detach()
                if self.fvp_stride > 1:
                    kl_old = self.subsampled_kl(theta, train, valid, old, self.fvp_stride)
                kl_grads = torch.autograd.grad(kl_old, leaves, create_graph=True, allow_unused=True)
                flat_kl_grad = flatten([torch.zeros_like(w) if gi is None else gi
                                        for w, gi in zip(leaves, kl_grads)])
            loss = float(j_old.item())

            def fvp(v: torch.Tensor) -> torch.Tensor:
                with torch.enable_grad():
                    hv = torch.autograd.grad(flat_kl_grad, leaves, grad_outputs=v, retain_graph=True,
                                             allow_unused=True)
                fv = flatten([torch.zeros_like(w) if h is None else h for w, h in zip(leaves, hv)]).detach()
                if reduce is not None:
                    fv = reduce([fv])[0]
                return fv + self.cg_damping * v

        direct = self.fvp_mode == "gauss_newton" and supports_gauss_newton(self.policy)

        def evaluate(flat: torch.Tensor) -> tuple[float, float]:
            if direct:
                with torch.no_grad():
                    j_new, kl_new = self.objective_direct(unflatten(flat.detach(), theta), train, valid, old)
            else:
                cand = {k: v.detach().requires_grad_(True) for k, v in unflatten(flat, theta).items()}
                with torch.enable_grad():
                    j_new, kl_new, _ = self.objective(cand, train, valid, old, create_graph=False)
            if reduce is not None:
                j_new, kl_new = reduce([torch.stack([j_new.detach(), kl_new.detach()]).double()])[0].tolist()
                return float(j_new), float(kl_new)
            return float(j_new.item()), float(kl_new.item())

        if reduce is not None:
            g_loss = reduce([g, torch.tensor([loss], dtype=torch.float64, device=g.device)])
            g, loss = g_loss[0], float(g_loss[1].item())
        theta0 = flatten({k: v.detach() for k, v in theta.items()})
        return Prepared(theta0, g, fvp, evaluate, loss, old, theta)

    def step(self, params: Mapping[str, torch.nn.Parameter], train: Sequence[FlatBatch],
             valid: FlatBatch | None = None, reduce: Reducer | None = None) -> dict[str, float]:
        """One TRPO meta-update of ``params`` in place.

        Args:
            params: the policy's parameters (``policy.params()``), updated in place.
            train: D0 batches, one per inner step (only the first is used by a one-stage method).
            valid: D1, episodes sampled with the adapted policies (required for two-stage methods).
            reduce: the data-parallel average over processes (see :meth:`prepare`); ``None``: one process.

        Returns:
            TRPO diagnostics (:class:`~rkmeta_rl.rl.trpo.TRPOStats` fields).
        """
        prep = self.prepare(params, train, valid, reduce)
        new_flat, stats = trpo_update(prep.theta, prep.grad, prep.fvp, prep.evaluate, prep.loss, self.max_kl,
                                      self.cg_iters, self.ls_backtrack_ratio, self.ls_max_steps)
        with torch.no_grad():
            for k, v in unflatten(new_flat, prep.like).items():
                params[k].copy_(v)
        return _stats_dict(stats)


@dataclass
class Prepared:
    """TRPO inputs at ``theta_old``: flat parameters ``theta [P]``, ``grad [P]`` of ``J``, the damped
    ``fvp: [P] -> [P]``, ``evaluate: [P] -> (J, KL)``, the loss ``J(theta_old)``, old quantities, and a
    parameter dict giving the flat layout."""

    theta: torch.Tensor
    grad: torch.Tensor
    fvp: Callable[[torch.Tensor], torch.Tensor]
    evaluate: Callable[[torch.Tensor], tuple[float, float]]
    loss: float
    old: _Old
    like: dict[str, torch.Tensor]


def _stats_dict(stats: TRPOStats) -> dict[str, float]:
    return {k: float(v) for k, v in asdict(stats).items()}
