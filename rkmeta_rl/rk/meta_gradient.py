"""The Runge-Kutta meta-gradient (docs/method.md), on two execution paths that give the same numbers.

For a tableau ``(a, p, q)`` with ``s`` stages and step ``h``, per task::

    k_1 = grad_theta L_S(theta)                                   support loss at theta
    theta_i = theta - h * sum_{j<i} q_ij k_j(theta)               i >= 2, k_j differentiated through
    k_i = d/dtheta L_Q(theta_i(theta))                            query loss of stage i
    g_task = sum_i a_i k_i

and the meta-gradient is the mean of ``g_task`` over tasks. With two stages this is the paper's Algorithm 2
(Im, Jiang and Verma, 2019): ``theta' = theta - alpha k_1`` with ``alpha = q21 h`` (repeated ``inner_steps``
times), ``g = a1 k1 + a2 k2``; ``midpoint`` is MAML's meta-gradient (Finn et al., 2017) and ``euler`` the
gradient of the support loss.

Per-parameter methods (``method={"head.*": "midpoint", "*": "ralston"}``) and ``adapt=`` (ANIL): parameter
group ``l`` adapts with its own ``alpha_l`` (0 for groups left out, :mod:`rkmeta_rl.rk.method_spec`) through the
one inner step :func:`rkmeta_rl.rk.inner_step`, and ``g_l = a1_l k1_l + a2_l k2_l`` with ``k2`` differentiated
through every group's step. One method everywhere runs exactly the uniform program (one float per setting).

Four paths:

* ``"vmap"``: one ``torch.func.vmap`` over tasks of a nested ``torch.func.grad``: fastest for MLPs.
* ``"loop"``: a plain per-task loop with ``torch.autograd.grad(create_graph=True)``: the reference path,
  and the faster one for convolutional nets on CPU with large tasks (vmap turns per-task convolutions into
  grouped ones).
* ``"batched"``: all tasks in one autograd graph over per-task parameter copies, for losses that carry a
  task-batched form (:mod:`rkmeta_rl.rk.batched`; the bundled conv4's do): the fastest for conv nets with
  small tasks (Omniglot 1-shot with 1 query per class).
* ``"analytic"``: no autograd graph at all: the losses' hand-written gradients and Hessian-vector products
  (:mod:`rkmeta_rl.rk.analytic`; the bundled strided conv4's, :mod:`rkmeta_rl.supervised.conv4_analytic`) for
  one- and two-stage methods: the fastest for the conv4 at every measured task size.

``path="auto"`` takes ``"vmap"`` without convolution kernels, ``"analytic"`` for conv nets whose losses have
the hand-written form (one- and two-stage methods), ``"batched"`` for conv nets whose losses have a task-batched
form and whose tasks are small, ``"loop"`` for other conv nets (:func:`choose_path`, with the measured figures).

Caution (https://github.com/pytorch/functorch/issues/534): PyTorch's fused batch-norm / layer-norm backward has
been reported to give wrong second-order gradients under ``vmap`` (0.2-15 % off). On torch 2.13 CPU we measured
``F.batch_norm`` correct (``tests/test_conv4.py``), but other versions and devices differ: models meant for the
vmap path should write normalisation from plain mean/var ops, as the bundled conv4 does, and be checked by finite
differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import torch
from torch.func import grad, grad_and_value, vmap
from torch.utils._pytree import tree_map

from . import autocompile
from .analytic import analytic_supports, has_analytic, meta_gradient_analytic
from .autocompile import CompileMode
from .batched import has_batched, meta_gradient_batched, task_elements
from .inner_step import StepSizes, inner_step
from .method_spec import AdaptSpec, MethodMap, MethodSpec, resolve_groups
from .tableau import Tableau

__all__ = ["PerStage", "meta_gradient", "adapt", "choose_path", "Params", "LossFn", "BATCHED_MAX_TASK_ELEMENTS",
           "PATHS"]

Params = dict[str, torch.Tensor]
LossFn = Callable[[Mapping[str, torch.Tensor], Any], torch.Tensor]
Path = Literal["auto", "vmap", "loop", "batched", "analytic"]
#: every value of ``meta_gradient``'s ``path`` (what configs and command-line flags accept)
PATHS: tuple[str, ...] = ("auto", "vmap", "loop", "batched", "analytic")


class PerStage(tuple):
    """Per-stage task data for methods with more than two stages.

    ``PerStage([d_1, ..., d_s])``: stage 1 computes ``support_loss(theta, d_1)`` and stage ``i >= 2`` computes
    ``query_loss(theta_i, d_i)``, so no stage adapts on data that is then scored (docs/method.md).
    Each ``d_i`` is a pytree whose leaves have the task index as leading dimension. A plain pytree (not
    ``PerStage``) is shared by all stages, which is only allowed for one- and two-stage methods: there the
    support loss reads the support part and the query loss the query part of the same pytree.
    """


class _Frozen(dict):
    """A read-only ``{name: float}`` that can be part of a hashable plan (the compiled-program cache key)."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self.items()))


#: a per-parameter float: one float for every parameter, or ``{name: float}``
_PerParam = float | _Frozen


def _collapse(values: Mapping[str, float]) -> _PerParam:
    """One float when every parameter has the same value (the uniform method's exact arithmetic), else a map."""
    vals = set(values.values())
    return float(next(iter(vals))) if len(vals) == 1 else _Frozen(values)


def _at(value: _PerParam, name: str) -> float:
    return value if isinstance(value, float) else value[name]


@dataclass(frozen=True)
class _Plan:
    """What the traced program depends on.

    ``a[i]``: stage ``i``'s weights, ``alpha``: the inner step sizes (both one float for a uniform method);
    ``h``, ``q`` and ``mask`` (1 for adapted parameters, 0 otherwise) only matter for more than two stages.
    """

    name: str
    stages: int
    a: tuple[_PerParam, ...]
    q: tuple[tuple[float, ...], ...]
    h: float
    alpha: _PerParam
    mask: _PerParam
    inner_steps: int
    first_order: bool
    per_stage: bool = False


#: Task-data elements per task up to which ``path="auto"`` takes the batched path for conv nets (see
#: :func:`choose_path`): Omniglot 5-way 1-shot holds 7,850 with 1 query per class and 15,700 with 3.
BATCHED_MAX_TASK_ELEMENTS = 12_000


def choose_path(params: Mapping[str, torch.Tensor], support_loss: Any = None, query_loss: Any = None,
                task_data: Any = None) -> Literal["vmap", "loop", "batched", "analytic"]:
    """The execution path ``path="auto"`` takes for these parameters (and losses and task data, when given).

    * no convolution kernel (no parameter with ndim >= 4): ``"vmap"``, several times faster than the loop for
      MLPs (``scripts/bench_meta_gradient.py``);
    * convolution kernels and losses with a hand-written gradient and Hessian-vector product (the ``analytic``
      form of :class:`rkmeta_rl.rk.TaskBatchedLoss`, as the bundled strided conv4's): ``"analytic"``
      (:mod:`rkmeta_rl.rk.analytic`; ``meta_gradient`` takes the next rule instead for methods with more than
      two stages, which it does not cover);
    * convolution kernels, losses with a task-batched form and small tasks (at most ``BATCHED_MAX_TASK_ELEMENTS``
      elements of task data per task, :func:`rkmeta_rl.rk.batched.task_elements`): ``"batched"``
      (:mod:`rkmeta_rl.rk.batched`);
    * other convolutional settings: ``"loop"`` (vmap turns per-task convolutions into grouped ones, slower).

    Measured with ``scripts/bench_fewshot.py`` (Omniglot 5-way 1-shot conv4, meta-batch 32, second order,
    alpha 0.4, one torch thread, the paths interleaved in one process on a 2-core Intel Xeon; seconds per
    meta-iteration, median wall):

    ==========  ======  ======  =======  ========  ==================
    queries     loop    vmap    batched  analytic  analytic / loop
    ==========  ======  ======  =======  ========  ==================
    1           0.972   0.676   0.743    0.291     0.30 (3.34x faster)
    15          2.58    --      5.25     1.39      0.54 (1.86x faster)
    ==========  ======  ======  =======  ========  ==================

    (two more runs at 1 query, loop and analytic only: 1.114 against 0.313, 3.55x, and 1.022 against 0.266,
    3.85x; earlier, on a 2-core AMD EPYC: 0.705 / 0.506 / 0.497 / 0.230 at 1 query; the machine's speed also
    moves by itself between minutes. At 15 queries the analytic path computes the tasks in four chunks of 8,
    :func:`rkmeta_rl.rk.analytic.default_chunk`). A later, quieter session on the same kind of machine: 2.98-3.51x
    at 1 query in six runs with one thread, 4.76-5.73x with two threads (``--threads 2``, three runs).

    With the batched path alone (earlier runs, load average 4-6): 1 query 2.22 s against the loop's 3.70, 15
    queries 15.5 s against 10.7, crossover between 3 and 6 queries per class (7,850 and 15,700 elements of task
    data per task), hence its size rule. The batched path's gain is in the kernels (one ``bmm`` per layer and
    stage for all tasks, instead of 32 small convolutions); the analytic path also drops autograd's double
    backward, which rebuilds every unfolded image several times over.
    """
    return _choose(params, support_loss, query_loss, task_data, analytic=True)


def _choose(params: Mapping[str, torch.Tensor], support_loss: Any, query_loss: Any, task_data: Any, *,
            analytic: bool) -> Literal["vmap", "loop", "batched", "analytic"]:
    """:func:`choose_path`'s rules, the analytic one only when ``analytic``."""
    if not any(p.dim() >= 4 for p in params.values()):
        return "vmap"
    if analytic and support_loss is not None and query_loss is not None and has_analytic(support_loss, query_loss):
        return "analytic"
    if (support_loss is not None and query_loss is not None and task_data is not None
            and has_batched(support_loss, query_loss) and task_elements(task_data) <= BATCHED_MAX_TASK_ELEMENTS):
        return "batched"
    return "loop"


def _scaled(mask: _PerParam, c: float) -> StepSizes:
    """Step sizes ``mask_l * c`` (``c`` itself for a uniform mask)."""
    if isinstance(mask, float):
        return mask * c
    return {k: m * c for k, m in mask.items()}


def adapt(
    params: Mapping[str, torch.Tensor],
    loss_fn: LossFn,
    data: Any,
    lr: StepSizes,
    steps: int = 1,
    *,
    create_graph: bool = False,
) -> Params:
    """Inner (fast) adaptation of ONE task: ``steps`` gradient steps ``theta_l <- theta_l - lr_l grad_l L``.

    Args:
        params: ``{name: tensor}`` initial parameters.
        loss_fn: ``loss_fn(params, data) -> scalar``.
        data: one task's data (no task dimension).
        lr: step size ``alpha``: a float, or ``{name: alpha_l}`` (see :func:`rkmeta_rl.rk.step_sizes`).
        steps: number of steps.
        create_graph: keep the graph so the result is differentiable w.r.t. ``params``.

    Returns:
        the adapted parameters (detached unless ``create_graph``).
    """
    cur: Params = {k: v if (create_graph and v.requires_grad) else v.detach().requires_grad_(True)
                   for k, v in params.items()}
    for _ in range(steps):
        with torch.enable_grad():
            loss = loss_fn(cur, data)
            grads = torch.autograd.grad(loss, list(cur.values()), create_graph=create_graph)
        cur = inner_step(cur, grads, lr)
        if not create_graph:
            cur = {k: v.detach().requires_grad_(True) for k, v in cur.items()}
    return {k: v if create_graph else v.detach() for k, v in cur.items()}


def _validate(
    params: Mapping[str, torch.Tensor], method: MethodSpec | MethodMap, inner_lr: float, inner_steps: int,
    step_rule: str, task_data: Any, first_order: bool, adapt: AdaptSpec = None,
) -> _Plan:
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params must be a non-empty dict of tensors")
    for k, v in params.items():
        if not isinstance(v, torch.Tensor) or not (v.is_floating_point() or v.is_complex()):
            raise ValueError(f"parameter {k!r} must be a floating-point tensor, got "
                             f"{getattr(v, 'dtype', type(v).__name__)}")
    groups = resolve_groups(list(params), method, adapt)
    if not (isinstance(inner_lr, (int, float)) and math.isfinite(inner_lr) and inner_lr > 0):
        raise ValueError(f"inner_lr must be a finite number > 0, got {inner_lr!r}")
    if not isinstance(inner_steps, int) or inner_steps < 1:
        raise ValueError(f"inner_steps must be an integer >= 1, got {inner_steps!r}")
    if step_rule not in ("tableau", "fixed"):
        raise ValueError(f"step_rule must be 'tableau' or 'fixed', got {step_rule!r}")
    weights = groups.weights()  # raises for mixed tableaus with more than two stages
    s = groups.stages
    tab: Tableau | None = groups.tableau
    name = tab.name if tab is not None else "per-parameter methods"
    if s > 2 and inner_steps != 1:
        raise ValueError(f"inner_steps > 1 is defined for one- and two-stage methods only; {name} has "
                         f"{s} stages")
    if isinstance(task_data, PerStage):
        if len(task_data) != s:
            raise ValueError(f"PerStage data must hold one pytree per stage: {name} has {s} "
                             f"stages, got {len(task_data)}")
    elif s > 2:
        raise ValueError(f"{name} has {s} stages: pass rk.PerStage([d_1, ..., d_{s}]) so "
                         f"that later stages are scored on data they did not adapt on")
    h = tab.step_size(float(inner_lr), step_rule) if tab is not None else 0.0
    return _Plan(name=name, stages=s, a=tuple(_collapse(w) for w in weights),
                 q=tab.q if tab is not None else (), h=h,
                 alpha=_collapse(groups.step_sizes(float(inner_lr), step_rule)),
                 mask=_collapse({n: 1.0 if f else 0.0 for n, f in zip(groups.names, groups.adapted)}),
                 inner_steps=inner_steps, first_order=bool(first_order), per_stage=isinstance(task_data, PerStage))


def _stage_data(plan: _Plan, data: Any, i: int) -> Any:
    """Stage ``i``'s data (0-based); ``data`` is a plain tuple of per-stage pytrees when ``plan.per_stage``."""
    return data[i] if plan.per_stage else data


def _query_data(plan: _Plan, data: Any) -> Any:
    """The data diagnostics score the query loss on: stage 2's (or the shared pytree)."""
    return data[1] if plan.per_stage and len(data) > 1 else (data[0] if plan.per_stage else data)


def _num_tasks(task_data: Any) -> int:
    leaves = torch.utils._pytree.tree_leaves(tuple(task_data) if isinstance(task_data, PerStage) else task_data)
    if not leaves:
        raise ValueError("task_data has no tensors")
    n = leaves[0].shape[0]
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor) or leaf.dim() == 0 or leaf.shape[0] != n:
            raise ValueError("every leaf of task_data must be a tensor whose leading dimension indexes tasks "
                             f"(expected {n} tasks)")
    if n == 0:
        raise ValueError("task_data holds zero tasks")
    return n


# --------------------------------------------------------------------------------------------------
# vectorised path: torch.func
# --------------------------------------------------------------------------------------------------


def _func_stages(
    plan: _Plan, support_loss: LossFn, query_loss: LossFn, data: Any, m: int, theta: Params
) -> tuple[list[Params], list[torch.Tensor], tuple[Params, torch.Tensor] | None]:
    """``[k_1, ..., k_m]``, each a differentiable function of ``theta`` (torch.func), the support loss at
    ``theta``, and (for ``m >= 2``) stage 2's adapted point and query loss, detached: exactly the diagnostics'
    "post-adaptation" values, so they need not be computed again."""
    d0 = _stage_data(plan, data, 0)
    if m == 1:
        k1, l1 = grad_and_value(support_loss)(theta, d0)
        return [k1], [l1], None

    def stage_loss(t: Params) -> tuple[torch.Tensor, tuple[list[Params], list[torch.Tensor], Any]]:
        ks, losses, post = _func_stages(plan, support_loss, query_loss, data, m - 1, t)
        dirs = [{k: v.detach() for k, v in kj.items()} if plan.first_order else kj for kj in ks]
        if m == 2:
            cur = inner_step(t, dirs[0], plan.alpha)
            for _ in range(plan.inner_steps - 1):
                gk = grad(support_loss)(cur, d0)
                if plan.first_order:
                    gk = {k: v.detach() for k, v in gk.items()}
                cur = inner_step(cur, gk, plan.alpha)
        else:
            row = plan.q[m - 1]
            cur = dict(t)
            for j in range(m - 1):
                if row[j] != 0.0:
                    cur = inner_step(cur, dirs[j], _scaled(plan.mask, plan.h * row[j]))
        lm = query_loss(cur, _stage_data(plan, data, m - 1))
        if m == 2:
            post = ({k: v.detach() for k, v in cur.items()}, lm.detach())
        return lm, (ks, losses, post)

    km, (ks, losses, post) = grad(stage_loss, has_aux=True)(theta)
    return ks + [km], losses, post


def _vmap_task(plan: _Plan, support_loss: LossFn, query_loss: LossFn, stats: bool):
    s = plan.stages

    def per_task(theta: Params, data: Any) -> tuple[Params, dict[str, torch.Tensor]]:
        ks, losses, post = _func_stages(plan, support_loss, query_loss, data, s, theta)
        g = {k: sum(_at(plan.a[i], k) * ks[i][k] for i in range(s) if _at(plan.a[i], k) != 0.0) for k in theta}
        g = {k: (v if isinstance(v, torch.Tensor) else torch.zeros_like(theta[k])) for k, v in g.items()}
        out: dict[str, torch.Tensor] = {"support_pre": losses[0]}
        if stats:
            out.update(_func_stats(plan, support_loss, query_loss, data, theta, ks[0], post))
        elif post is not None:  # computed by stage 2 anyway
            out["query_post"] = post[1]
        return g, out

    return per_task


def _func_stats(plan: _Plan, support_loss: LossFn, query_loss: LossFn, data: Any, theta: Params,
                k1: Params, post: tuple[Params, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Forward-only diagnostics: query loss before, support and query loss after adaptation. ``post`` is
    stage 2's adapted point and query loss when there is a stage 2; a one-stage method adapts here."""
    d0, dq = _stage_data(plan, data, 0), _query_data(plan, data)
    th = {k: v.detach() for k, v in theta.items()}
    if post is not None:
        cur, query_post = post
    else:
        cur = inner_step(th, {k: v.detach() for k, v in k1.items()}, plan.alpha)
        for _ in range(plan.inner_steps - 1):
            cur = inner_step(cur, {k: v.detach() for k, v in grad(support_loss)(cur, d0).items()}, plan.alpha)
        query_post = query_loss(cur, dq).detach()
    return {
        "query_pre": query_loss(th, dq).detach(),
        "support_post": support_loss(cur, d0).detach(),
        "query_post": query_post,
    }


def _vmap_fn(plan: _Plan, support_loss: LossFn, query_loss: LossFn, stats: bool, chunk_size: int | None
             ) -> Callable[[Params, Any], tuple[Params, dict[str, torch.Tensor]]]:
    per_task = vmap(_vmap_task(plan, support_loss, query_loss, stats), in_dims=(None, 0), chunk_size=chunk_size)

    def batched(theta: Params, task_data: Any) -> tuple[Params, dict[str, torch.Tensor]]:
        g, st = per_task(theta, task_data)
        return {k: v.mean(0) for k, v in g.items()}, st

    return batched


def _meta_gradient_vmap(plan: _Plan, params: Params, support_loss: LossFn, query_loss: LossFn, task_data: Any,
                        stats: bool, chunk_size: int | None, compile: CompileMode
                        ) -> tuple[Params, dict[str, torch.Tensor]]:
    theta = {k: v.detach() for k, v in params.items()}
    # the compiled-program cache is keyed by everything that changes the traced program (the loss functions
    # included, kept alive by the key, so a new closure is a new program): rkmeta_rl.rk.autocompile
    key = (plan, support_loss, query_loss, stats, chunk_size)
    g, st = autocompile.run(key, lambda: _vmap_fn(plan, support_loss, query_loss, stats, chunk_size),
                            (theta, task_data), compile, theta, task_data)
    return g, {k: v.detach() for k, v in st.items()}


# --------------------------------------------------------------------------------------------------
# reference path: per-task loop with torch.autograd
# --------------------------------------------------------------------------------------------------


def _index(task_data: Any, t: int) -> Any:
    return tree_map(lambda x: x[t], task_data)


def _loop_task(plan: _Plan, theta: Params, support_loss: LossFn, query_loss: LossFn, data: Any,
               stats: bool) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """One task's ``a_1 k_1 + ... + a_s k_s`` (one tensor per parameter) and its diagnostics, by autograd.

    The task-batched path (:mod:`rkmeta_rl.rk.batched`) runs this same program once for all tasks: ``theta``
    then holds ``[T, *shape]`` per-task copies, the losses return ``[T]`` per-task values, and every gradient is
    taken of their sum (for one task the sum of a scalar is the scalar)."""
    s = plan.stages
    names = list(theta)
    leaves = [theta[k] for k in names]
    d0 = _stage_data(plan, data, 0)
    l1 = support_loss(theta, d0)
    # k1 keeps its graph when a later stage differentiates through it
    need_graph_1 = s > 1 and not plan.first_order
    k1 = list(torch.autograd.grad(l1.sum(), leaves, create_graph=need_graph_1))
    ks: list[list[torch.Tensor]] = [k1]
    out: dict[str, torch.Tensor] = {"support_pre": l1.detach()}
    for m in range(2, s + 1):
        dirs = [[g.detach() for g in kj] if plan.first_order else kj for kj in ks]
        if m == 2:
            cur = list(inner_step(theta, dirs[0], plan.alpha).values())
            for _ in range(plan.inner_steps - 1):
                lk = support_loss(dict(zip(names, cur)), d0)
                gk = torch.autograd.grad(lk.sum(), cur, create_graph=not plan.first_order)
                cur = list(inner_step(dict(zip(names, cur)), gk, plan.alpha).values())
        else:
            row = plan.q[m - 1]
            cur = list(leaves)
            for j in range(m - 1):
                if row[j] != 0.0:
                    step = _scaled(plan.mask, plan.h * row[j])
                    cur = list(inner_step(dict(zip(names, cur)), dirs[j], step).values())
        lm = query_loss(dict(zip(names, cur)), _stage_data(plan, data, m - 1))
        if m == 2:  # the adapted point and its query loss are the diagnostics' "post" values: keep them
            post_point, post_query = [w.detach() for w in cur], lm.detach()
        km = torch.autograd.grad(lm.sum(), leaves, create_graph=(m < s and not plan.first_order), allow_unused=True)
        ks.append([torch.zeros_like(w) if g is None else g for w, g in zip(leaves, km)])
    g_task = [sum(_at(plan.a[i], k) * ks[i][n].detach() for i in range(s) if _at(plan.a[i], k) != 0.0)
              for n, k in enumerate(names)]
    g_task = [v if isinstance(v, torch.Tensor) else torch.zeros_like(leaves[n]) for n, v in enumerate(g_task)]
    if stats:
        with torch.no_grad():
            th = {k: v.detach() for k, v in theta.items()}
            dq = _query_data(plan, data)
        if s >= 2:
            # stage 2 already evaluated the query loss at the adapted point on this data
            cur_p = dict(zip(names, post_point))
        else:
            with torch.no_grad():
                cur_p = inner_step(th, [g.detach() for g in k1], plan.alpha)
            for _ in range(plan.inner_steps - 1):
                w = {k: v.detach().requires_grad_(True) for k, v in cur_p.items()}
                with torch.enable_grad():
                    gk = torch.autograd.grad(support_loss(w, d0).sum(), list(w.values()))
                cur_p = inner_step({k: v.detach() for k, v in w.items()}, gk, plan.alpha)
        with torch.no_grad():
            out["query_pre"] = query_loss(th, dq)
            out["support_post"] = support_loss(cur_p, d0)
            out["query_post"] = post_query if s >= 2 else query_loss(cur_p, dq)
    elif s >= 2:  # computed by stage 2 anyway
        out["query_post"] = post_query
    return g_task, out


def _meta_gradient_loop(plan: _Plan, params: Params, support_loss: LossFn, query_loss: LossFn, task_data: Any,
                        n_tasks: int, stats: bool) -> tuple[Params, dict[str, torch.Tensor]]:
    theta = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    total: list[torch.Tensor] | None = None
    st: dict[str, list[torch.Tensor]] = {}
    for t in range(n_tasks):
        g, out = _loop_task(plan, theta, support_loss, query_loss, _index(task_data, t), stats)
        total = g if total is None else [a + b for a, b in zip(total, g)]
        for k, v in out.items():
            st.setdefault(k, []).append(v.detach())
    assert total is not None
    return ({k: v / n_tasks for k, v in zip(theta, total)}, {k: torch.stack(v) for k, v in st.items()})


# --------------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------------


def meta_gradient(
    params: Mapping[str, torch.Tensor],
    support_loss: LossFn,
    query_loss: LossFn,
    task_data: Any,
    method: MethodSpec | MethodMap = "midpoint",
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    step_rule: str = "tableau",
    first_order: bool = False,
    *,
    adapt: AdaptSpec = None,
    path: Path = "auto",
    stats: bool = True,
    chunk_size: int | None = None,
    compile: CompileMode = "auto",
) -> tuple[Params, dict[str, float]]:
    """The RK meta-gradient averaged over a batch of tasks.

    Args:
        params: ``{name: tensor}`` meta-parameters theta (not modified).
        support_loss: ``support_loss(params, data) -> scalar`` for ONE task (stage 1).
        query_loss: ``query_loss(params, data) -> scalar`` for ONE task (stages >= 2).
        task_data: a pytree of tensors of shape ``[n_tasks, ...]``, shared by every stage, or a
            :class:`PerStage` of one such pytree per stage (required for more than two stages).
        method: a tableau name, a number x (generic second order) or a :class:`Tableau`; or per-parameter
            methods: an ordered ``{glob: method}`` mapping (first match wins, every parameter must match) or its
            string form ``"head.*=midpoint,*=ralston"`` (:mod:`rkmeta_rl.rk.method_spec`). Parameter group ``l``
            then adapts with its own ``alpha_l`` and gets ``g_l = a1_l k1_l + a2_l k2_l``, ``k2`` the derivative
            through every group's inner step. Mixed tableaus may have at most two stages.
        inner_lr: MAML's alpha. Under ``step_rule="tableau"`` a method adapts with ``2 q21 inner_lr``
            (``midpoint``: exactly ``inner_lr``); under ``"fixed"`` every method adapts with ``inner_lr``.
        inner_steps: inner gradient steps (two-stage methods; each step on the support data).
        step_rule: ``"tableau"`` (the paper's Algorithm 2) or ``"fixed"``.
        first_order: drop the second-order terms (FOMAML-style): adaptation directions are constants.
        path: ``"vmap"``, ``"loop"``, ``"batched"`` (losses with a task-batched form,
            :mod:`rkmeta_rl.rk.batched`), ``"analytic"`` (losses with hand-written gradients and Hessian-vector
            products, one- and two-stage methods, :mod:`rkmeta_rl.rk.analytic`) or ``"auto"`` (see
            :func:`choose_path`).
        stats: also compute the forward-only diagnostics: the query loss before and the support loss after
            adaptation (two more forward passes per task: 12-14 % of a few-shot conv4 meta-iteration at 1 query
            per class, 22-37 % at 15, on the analytic path; ``scripts/bench_fewshot.py --diagnostics both``), and
            for one-stage methods the query loss after it.
            ``False``: only the losses the meta-gradient computes anyway.
        chunk_size: optional vmap chunk size (memory bound on large meta-batches); on the batched path the tasks
            per program (default all tasks at once, the fastest measured); on the analytic path likewise, with
            the default :func:`rkmeta_rl.rk.analytic.default_chunk` (all tasks at once while their data is small,
            else chunks of about 600,000 data elements: measured faster, and less memory).
        adapt: the parameters the inner loop moves: a glob, a comma-separated string or a list of globs
            (default every parameter; ANIL is ``adapt="head.*"``); the others have ``alpha_l = 0``.
        compile: ``"auto"`` (default): the vectorised path compiles itself with ``torch.compile`` once the same
            loss functions, settings and shapes have run eagerly a few times for a few seconds (float32 MLPs on
            the CPU; :mod:`rkmeta_rl.rk.autocompile` says when, and ``RKMETA_COMPILE=0`` turns it off).
            ``True``: compile from the first call (tens of seconds, then several times faster per call);
            ``False``: always eager. Compiled programs are cached per loss functions and settings; when
            compiling fails a ``RuntimeWarning`` says why and the eager program answers. Compiled and eager
            results agree to rounding, not bit for bit: pass ``False`` for bitwise-reproducible runs. Ignored
            by the loop, batched and analytic paths.

    Returns:
        ``(grads, stats)``: ``grads`` is a dict like ``params`` with the mean meta-gradient (detached);
        ``stats`` holds floats ``support_loss_pre``, ``query_loss_pre``, ``support_loss_post``,
        ``query_loss_post`` (means over tasks; post = after the method's inner adaptation) and ``num_tasks``;
        with ``stats=False`` only ``support_loss_pre``, ``num_tasks`` and, for methods with a second stage,
        ``query_loss_post``.
    """
    plan = _validate(params, method, inner_lr, inner_steps, step_rule, task_data, first_order, adapt)
    autocompile.check_mode(compile)
    n = _num_tasks(task_data)
    if plan.per_stage:
        task_data = tuple(task_data)  # a plain tuple, so that vmap and tree_map see the per-stage pytrees
    chosen = (_choose(params, support_loss, query_loss, task_data, analytic=analytic_supports(plan))
              if path == "auto" else path)
    if chosen == "batched" and not has_batched(support_loss, query_loss):
        raise ValueError("path='batched' needs losses with a task-batched form (rkmeta_rl.rk.TaskBatchedLoss); "
                         f"got {type(support_loss).__name__} and {type(query_loss).__name__}")
    if chosen == "analytic" and not has_analytic(support_loss, query_loss):
        raise ValueError("path='analytic' needs losses with an analytic form (TaskBatchedLoss(..., analytic=...), "
                         "rkmeta_rl.rk.analytic.AnalyticLoss)")
    if chosen == "analytic":
        grads, st = meta_gradient_analytic(plan, dict(params), support_loss, query_loss, task_data, n, stats,
                                           chunk_size)
    elif chosen == "batched":
        grads, st = meta_gradient_batched(plan, dict(params), support_loss, query_loss, task_data, n, stats,
                                          chunk_size)
    elif chosen == "vmap":
        grads, st = _meta_gradient_vmap(plan, dict(params), support_loss, query_loss, task_data, stats, chunk_size,
                                        compile)
    elif chosen == "loop":
        grads, st = _meta_gradient_loop(plan, dict(params), support_loss, query_loss, task_data, n, stats)
    else:
        raise ValueError(f"path must be one of {', '.join(map(repr, PATHS))}, got {path!r}")
    out = {f"{k.split('_')[0]}_loss_{k.split('_')[1]}": float(v.mean()) for k, v in st.items()}
    out["num_tasks"] = float(n)
    return grads, out
