"""The task-batched path: every task's meta-gradient in ONE autograd graph over per-task parameter copies.

A loss that can score many tasks at once (each with its own parameters) carries that form as its ``batched``
attribute (:class:`TaskBatchedLoss`)::

    loss(params, task)             -> scalar      one task, params {name: [*shape]}
    loss.batched(params_T, tasks)  -> [T]         T tasks at once, params_T {name: [T, *shape]}

``loss.batched(params_T, tasks)[t]`` must equal ``loss({k: v[t]}, {k: x[t]})`` and depend on task ``t``'s
parameters and data only. Then, with ``theta_T`` a leaf holding ``T`` copies of ``theta``, the gradient of
``sum_t L(theta_T[t])`` with respect to ``theta_T`` is the stack of the per-task gradients, and the second-order
program of :mod:`rkmeta_rl.rk.meta_gradient` runs once for all tasks::

    k_1[t] = grad_{theta_T[t]} L_S                      (create_graph: one graph for all tasks)
    theta'_T = theta_T - alpha k_1
    k_2[t] = grad_{theta_T[t]} L_Q(theta'_T[t])
    g = (1/T) sum_t (a_1 k_1[t] + a_2 k_2[t])

The gain is in the kernels, not the arithmetic: each layer of each stage is one large batched operation instead of
``T`` small ones (for the conv4 a convolution of all tasks is one ``bmm``, :mod:`rkmeta_rl.supervised.conv4_tasks`).
Every ``meta_gradient`` setting (tableaus with any number of stages, ``PerStage`` data, ``inner_steps``,
``first_order``, per-parameter methods, ``adapt=``) runs here exactly as on the loop path, whose per-task program it
shares (``meta_gradient._loop_task``, run once on the stacked copies).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

if TYPE_CHECKING:
    from .analytic import AnalyticLoss
    from .meta_gradient import Params, _Plan

__all__ = ["TaskBatchedLoss", "BatchedLossFn", "has_batched", "task_elements", "meta_gradient_batched",
           "in_task_chunks"]

#: ``batched(params_T, tasks) -> [T]`` per-task losses, ``params_T`` leaves ``[T, *shape]``.
BatchedLossFn = Callable[[Mapping[str, torch.Tensor], Any], torch.Tensor]


class TaskBatchedLoss:
    """A per-task loss together with its many-tasks-at-once form (see the module docstring).

    Calling it is calling ``per_task``, so it is an ordinary engine loss on every path; ``batched`` is what the
    ``"batched"`` path calls.

    Args:
        per_task: ``loss(params, task) -> scalar``.
        batched: ``batched(params_T, tasks) -> [T]``, with ``batched(params_T, tasks)[t] ==
            per_task({k: v[t]}, task t)``.
        analytic: optionally the same loss's hand-written per-task value, gradient and Hessian-vector product
            (:class:`rkmeta_rl.rk.analytic.AnalyticLoss`), which the ``"analytic"`` path calls.
    """

    __slots__ = ("per_task", "batched", "analytic")

    def __init__(self, per_task: Callable[[Mapping[str, torch.Tensor], Any], torch.Tensor],
                 batched: BatchedLossFn, analytic: AnalyticLoss | None = None) -> None:
        self.per_task = per_task
        self.batched = batched
        self.analytic = analytic

    def __call__(self, params: Mapping[str, torch.Tensor], task: Any) -> torch.Tensor:
        return self.per_task(params, task)


def has_batched(*losses: Any) -> bool:
    """Whether every loss carries a callable ``batched`` form (so that ``path="batched"`` can run)."""
    return all(callable(getattr(f, "batched", None)) for f in losses)


def task_elements(task_data: Any) -> int:
    """Elements of one task's data (all leaves, every stage): ``numel / T``, the size rule of ``choose_path``."""
    leaves = torch.utils._pytree.tree_leaves(tuple(task_data) if isinstance(task_data, tuple) else task_data)
    return sum(x.numel() // x.shape[0] for x in leaves if isinstance(x, torch.Tensor) and x.dim() > 0)


def meta_gradient_batched(plan: _Plan, params: Params, support_loss: Any, query_loss: Any, task_data: Any,
                          n_tasks: int, stats: bool, chunk_size: int | None = None
                          ) -> tuple[Params, dict[str, torch.Tensor]]:
    """The meta-gradient over tasks, ``chunk_size`` tasks per autograd graph (default all: one graph).

    Chunks bound memory; they do not make it faster (measured with ``scripts/bench_fewshot.py``: 32 tasks in
    chunks of 2, 4 or 8 were 36, 19 and 9 % slower than one graph at 1 query per class, and no faster than the loop
    path at 15 queries).

    Returns:
        ``({name: mean over tasks of g_task}, {"support_pre": [T], ...})`` like the loop path.
    """
    return in_task_chunks(lambda part, m: _batched_chunk(plan, params, support_loss, query_loss, part, m, stats),
                          task_data, n_tasks, chunk_size)


ChunkFn = Callable[[Any, int], tuple["Params", dict[str, torch.Tensor]]]


def in_task_chunks(fn: ChunkFn, task_data: Any, n_tasks: int, chunk_size: int | None
                   ) -> tuple[Params, dict[str, torch.Tensor]]:
    """``fn(task_data, T)`` (mean gradient and per-task statistics) over chunks of ``chunk_size`` tasks, combined
    into the mean over all tasks and the concatenated statistics (``None``: one chunk of all tasks)."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be an integer >= 1 or None, got {chunk_size!r}")
    chunk = n_tasks if chunk_size is None else chunk_size
    if chunk >= n_tasks:
        return fn(task_data, n_tasks)
    total: Params | None = None
    st: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n_tasks, chunk):
        m = min(chunk, n_tasks - start)
        part = torch.utils._pytree.tree_map(lambda x, a=start, b=start + m: x[a:b], task_data)
        g, out = fn(part, m)
        total = {k: v * m for k, v in g.items()} if total is None else {k: total[k] + v * m for k, v in g.items()}
        for k, v in out.items():
            st.setdefault(k, []).append(v)
    assert total is not None
    return {k: v / n_tasks for k, v in total.items()}, {k: torch.cat(v) for k, v in st.items()}


def _batched_chunk(plan: _Plan, params: Params, support_loss: Any, query_loss: Any, task_data: Any,
                   n_tasks: int, stats: bool) -> tuple[Params, dict[str, torch.Tensor]]:
    """The meta-gradient of all ``n_tasks`` tasks in one autograd graph (the loop path's per-task program).

    Args:
        plan: the validated settings (:func:`rkmeta_rl.rk.meta_gradient._validate`).
        params: ``{name: [*shape]}`` theta.
        support_loss, query_loss: losses with a ``batched`` form (:class:`TaskBatchedLoss`).
        task_data: pytree with leading task dimension (a tuple of per-stage pytrees for ``PerStage`` data).
        n_tasks: ``T``.
        stats: also return the forward-only diagnostics.

    Returns:
        ``({name: mean over tasks of g_task}, {"support_pre": [T], ...})`` like the loop path.
    """
    from .meta_gradient import _loop_task  # that module imports this one

    # T independent copies of theta: a leaf, so that grad w.r.t. it is the stack of per-task gradients
    theta = {k: v.detach().unsqueeze(0).expand(n_tasks, *v.shape).clone().requires_grad_(True)
             for k, v in params.items()}
    g_task, out = _loop_task(plan, theta, support_loss.batched, query_loss.batched, task_data, stats)
    grads = {k: g.mean(0) for k, g in zip(params, g_task)}
    return grads, {k: v.detach() for k, v in out.items()}
