"""The analytic path: the meta-gradient from hand-written gradients and Hessian-vector products, no autograd graph.

For one- and two-stage methods the second-order program of :mod:`rkmeta_rl.rk.meta_gradient` needs only three
things of a loss, per task ``t`` with its own parameters. With ``theta_0 = theta``, ``theta_{j+1} = theta_j -
alpha grad L_S(theta_j)`` (``n`` inner steps, ``alpha`` per parameter) and ``J_j = I - alpha H_S(theta_j)``::

    k_1 = grad L_S(theta)
    k_2 = J_0^T ... J_{n-1}^T grad L_Q(theta_n)            (first order: grad L_Q(theta_n))
    g   = a_1 k_1 + a_2 k_2

and ``J_j^T v = v - H_S(theta_j) (alpha v)`` (``H`` symmetric, ``alpha`` diagonal): one Hessian-vector product
of the support loss per inner step, taken backwards from the query gradient. A loss that can give them for all
tasks at once carries them as the ``analytic`` attribute of its :class:`~rkmeta_rl.rk.TaskBatchedLoss`
(:class:`AnalyticLoss`); the bundled strided conv4's do (:mod:`rkmeta_rl.supervised.conv4_analytic`, written
by hand because autograd's double backward of a convolution rebuilds its unfolded images several times over and
PyTorch has no forward-mode kernel for it that is faster on the CPU). The result equals the loop path's to
rounding (tested in float64 for every setting this path accepts).

Settings with more than two stages (later stages differentiate through earlier query gradients) are not
covered: :func:`analytic_supports` says so and ``path="auto"`` then takes the batched path.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Protocol

import torch

from .batched import in_task_chunks, task_elements
from .inner_step import inner_step

if TYPE_CHECKING:
    from .meta_gradient import Params, _Plan

__all__ = ["AnalyticLoss", "has_analytic", "analytic_supports", "task_copies", "meta_gradient_analytic",
           "default_chunk", "ANALYTIC_CHUNK_ELEMENTS"]

#: Elements of task data (all tasks of a chunk together) up to which the analytic path computes the tasks in
#: one program when no chunk size is given (:func:`default_chunk`).
ANALYTIC_CHUNK_ELEMENTS = 600_000


class AnalyticLoss(Protocol):
    """Per-task value, gradient and Hessian-vector product of a loss, for ``T`` tasks at once.

    Parameters are ``{name: [T, *shape]}`` (task ``t``'s own in slice ``t``), values ``[T]``, gradients and
    products ``{name: [T, *shape]}``. ``state`` is whatever the loss keeps from ``value_and_grad`` at a point
    for ``hvp`` at that same point.
    """

    def value(self, params: Mapping[str, torch.Tensor], tasks: Any) -> torch.Tensor: ...

    def value_and_grad(self, params: Mapping[str, torch.Tensor], tasks: Any, *, keep: bool = True
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]: ...

    def hvp(self, state: Any, v: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    # optional, looked up with getattr: ``prepare(params) -> params``, the same values in the memory layout the
    # loss computes fastest in (leaving it out is the identity)


def has_analytic(*losses: Any) -> bool:
    """Whether every loss carries an ``analytic`` form (:class:`AnalyticLoss`)."""
    return all(getattr(f, "analytic", None) is not None for f in losses)


def analytic_supports(plan: _Plan) -> bool:
    """Whether the analytic program covers these settings: one or two stages (any inner steps, step sizes,
    per-parameter methods, ``first_order``)."""
    return plan.stages <= 2


def task_copies(loss: AnalyticLoss, params: Mapping[str, torch.Tensor], n_tasks: int) -> dict[str, torch.Tensor]:
    """``theta`` as ``n_tasks`` per-task copies ``{name: [T, *shape]}`` for ``loss``: stride-0 views of one copy
    in the layout the loss prefers (its optional ``prepare``), so that nothing is copied per task."""
    prepare = getattr(loss, "prepare", None)
    detached = {k: v.detach() for k, v in params.items()}
    prepared = prepare(detached) if prepare is not None else detached
    return {k: v.unsqueeze(0).expand(n_tasks, *v.shape) for k, v in prepared.items()}


def _scale(v: Mapping[str, torch.Tensor], alpha: Any) -> dict[str, torch.Tensor]:
    """``alpha v`` with ``alpha`` one float or ``{name: alpha_l}``."""
    if isinstance(alpha, float):
        return {k: alpha * x for k, x in v.items()}
    return {k: alpha[k] * x for k, x in v.items()}


def _times(a: float, x: torch.Tensor) -> torch.Tensor:
    """``a x``, without a pass over ``x`` when ``a`` is 1 (midpoint's and Euler's single weight; the same
    numbers)."""
    return x if a == 1.0 else a * x


def _task_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(0)``, contiguous, for ``x`` of any memory layout: the reduction runs over the dimensions in their
    memory order (PyTorch's reduction over dimension 0 of a permuted tensor was measured 20x slower)."""
    order = sorted(range(1, x.dim()), key=lambda d: -x.stride(d))
    m = x.permute(0, *order).mean(0)
    return m.permute(*[order.index(d) for d in range(1, x.dim())]).contiguous()


def default_chunk(task_data: Any, n_tasks: int) -> int | None:
    """Tasks per program on the analytic path when the caller gives no chunk size: all of them (``None``) while
    their data holds at most :data:`ANALYTIC_CHUNK_ELEMENTS` elements, else equal chunks under that size.

    Every task at once is fastest while the intermediates are small; with many images per task the unfolded
    matrices of all tasks (270 MB for the conv4's second block at 15 queries per class, meta-batch 32) no longer
    stay anywhere near the caches, and chunks of about 600,000 data elements were 5-20 % faster in interleaved
    runs (``bench_fewshot.py``'s setting, one thread, medians of 5-7 iterations; the machine's noise is of the
    same size, but no setting was measured slower; re-measure with ``python scripts/bench_fewshot.py
    --random-images --queries 15 --paths analytic,analytic:all,analytic:4`` and ``--ways``, ``--shots``):
    Omniglot 5-way 1-shot with 15 queries per class, 1.77 -> 1.57 s and 1.34 -> 1.29 s; 5 queries 0.63 ->
    0.56-0.60 s; 20-way 1-shot, 1 query 1.08 -> 0.98 s, 5 queries 2.66 -> 2.41 s; with 1 query per class
    (7,850 elements per task) every task stays in one program. The peak memory falls with the chunk. The rule
    is the CPU's: data on another device (a GPU, which wants its programs large) is computed all at once.
    """
    leaves = torch.utils._pytree.tree_leaves(tuple(task_data) if isinstance(task_data, tuple) else task_data)
    if any(isinstance(x, torch.Tensor) and x.device.type != "cpu" for x in leaves):
        return None
    chunks = math.ceil(n_tasks * task_elements(task_data) / ANALYTIC_CHUNK_ELEMENTS)
    return None if chunks <= 1 else math.ceil(n_tasks / chunks)


def meta_gradient_analytic(plan: _Plan, params: Params, support_loss: Any, query_loss: Any, task_data: Any,
                           n_tasks: int, stats: bool, chunk_size: int | None = None
                           ) -> tuple[Params, dict[str, torch.Tensor]]:
    """The meta-gradient over tasks from the losses' :class:`AnalyticLoss` forms (module docstring),
    ``chunk_size`` tasks at a time (default :func:`default_chunk`; chunks bound memory).

    Returns:
        ``({name: mean over tasks of g_task}, {"support_pre": [T], ...})`` like the loop path.
    """
    if not analytic_supports(plan):
        raise ValueError(f"the analytic path covers one- and two-stage methods; {plan.name} has {plan.stages} "
                         "stages (use path='batched' or 'auto')")
    if chunk_size is None:
        chunk_size = default_chunk(task_data, n_tasks)
    return in_task_chunks(lambda part, m: _analytic_chunk(plan, params, support_loss, query_loss, part, m, stats),
                          task_data, n_tasks, chunk_size)


def _analytic_chunk(plan: _Plan, params: Params, support_loss: Any, query_loss: Any, task_data: Any,
                    n_tasks: int, stats: bool) -> tuple[Params, dict[str, torch.Tensor]]:
    """:func:`meta_gradient_analytic` for all ``n_tasks`` tasks of ``task_data`` at once."""
    from .meta_gradient import _at, _query_data, _stage_data  # that module imports this one

    sup, qry = support_loss.analytic, query_loss.analytic
    names = list(params)
    theta = task_copies(sup, params, n_tasks)  # every task starts from the same theta
    d0 = _stage_data(plan, task_data, 0)
    second = plan.stages == 2 and not plan.first_order
    with torch.no_grad():
        l1, k1, state = sup.value_and_grad(theta, d0, keep=second)
        out: dict[str, torch.Tensor] = {"support_pre": l1}
        g = {k: _times(_at(plan.a[0], k), k1[k]) for k in names if _at(plan.a[0], k) != 0.0}
        cur = inner_step(theta, k1, plan.alpha)
        states = [state]
        for _ in range(plan.inner_steps - 1 if (plan.stages == 2 or stats) else 0):
            _, gk, st = sup.value_and_grad(cur, d0, keep=second)
            states.append(st)
            cur = inner_step(cur, gk, plan.alpha)
        if plan.stages == 2:
            lq, v, _ = qry.value_and_grad(cur, _stage_data(plan, task_data, 1), keep=False)
            if second:
                for st in reversed(states):
                    hv = sup.hvp(st, _scale(v, plan.alpha))
                    v = {k: v[k] - hv[k] for k in names}
            for k in names:
                a2 = _at(plan.a[1], k)
                if a2 != 0.0:
                    g[k] = g[k] + _times(a2, v[k]) if k in g else _times(a2, v[k])
        if stats:
            dq = _query_data(plan, task_data)
            out["query_pre"] = qry.value(theta, dq)
            out["support_post"] = sup.value(cur, d0)
            out["query_post"] = lq if plan.stages == 2 else qry.value(cur, dq)
        elif plan.stages == 2:  # computed anyway
            out["query_post"] = lq
        grads = {k: (_task_mean(g[k]) if k in g else torch.zeros_like(params[k])) for k in names}
    return grads, out
