"""Butcher tableaus of explicit Runge-Kutta methods used as meta-gradient rules.

An explicit RK method with ``s`` stages is the triple ``(a, p, q)``: weights ``a`` (sum to 1), nodes ``p``
and a strictly lower-triangular stage matrix ``q`` with ``p_i = sum_j q_ij``. MAML's meta-gradient is the
``midpoint`` member (Im, Jiang and Verma, "Model-Agnostic Meta-Learning using Runge-Kutta Methods", 2019;
docs/method.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Tableau", "TableauSpec", "get_tableau", "make_tableau", "generic", "TABLEAU_NAMES", "PAPER_METHODS"]

_TOL = 1e-9


@dataclass(frozen=True)
class Tableau:
    """A validated explicit Runge-Kutta Butcher tableau.

    Attributes:
        name: human-readable name (``"ralston"``, ``"generic(0.6)"``, ...).
        a: stage weights, length ``s``, summing to 1.
        p: stage nodes, length ``s``, ``p[0] == 0`` and ``p[i] == sum(q[i])``.
        q: ``s x s`` strictly lower-triangular stage matrix, as nested tuples.
        order: the method's order of accuracy.
    """

    name: str
    a: tuple[float, ...]
    p: tuple[float, ...]
    q: tuple[tuple[float, ...], ...]
    order: int

    @property
    def stages(self) -> int:
        """Number of stages ``s`` (gradient evaluations per task)."""
        return len(self.a)

    @property
    def adapts(self) -> bool:
        """Whether the meta-gradient differentiates through an inner step (False only for one stage)."""
        return self.stages > 1

    def step_size(self, inner_lr: float, step_rule: str = "tableau") -> float:
        """The RK step ``h`` that makes the method adapt as docs/method.md prescribes.

        ``"tableau"``: ``h = 2 * inner_lr``, so the first adaptation step is ``q21 * h`` and ``midpoint``
        adapts with exactly MAML's ``inner_lr``. ``"fixed"``: ``h = inner_lr / p2``, so every method's first
        adaptation step is ``inner_lr``. One-stage methods do not adapt; ``h`` is returned for completeness.
        """
        if step_rule == "tableau":
            return 2.0 * inner_lr
        if step_rule == "fixed":
            return inner_lr / self.p[1] if self.stages > 1 else inner_lr
        raise ValueError(f"step_rule must be 'tableau' or 'fixed', got {step_rule!r}")

    def inner_lr(self, inner_lr: float, step_rule: str = "tableau") -> float:
        """The learning rate ``alpha = q21 * h`` of the inner (fast) adaptation step.

        For a one-stage method (``euler``, the "pretrained" baseline) nothing is adapted during
        meta-training; at test time it is fine-tuned with MAML's ``inner_lr``, which is returned here.
        """
        if self.stages == 1:
            return float(inner_lr)
        return self.q[1][0] * self.step_size(inner_lr, step_rule)

    def __str__(self) -> str:
        return self.name


TableauSpec = str | float | int | Tableau


def make_tableau(
    a: Sequence[float],
    q: Sequence[Sequence[float]],
    p: Sequence[float] | None = None,
    *,
    name: str = "custom",
    order: int | None = None,
) -> Tableau:
    """Validate and build a :class:`Tableau`.

    Args:
        a: weights, length ``s``; must sum to 1.
        q: ``s x s`` stage matrix; must be strictly lower-triangular.
        p: nodes; default the row sums of ``q``; if given, must equal them.
        name: a label.
        order: the order of accuracy; default: the largest order (up to 4) whose conditions hold.

    Raises:
        ValueError: naming what is wrong.
    """
    a_t = tuple(float(x) for x in a)
    s = len(a_t)
    if s == 0:
        raise ValueError("a tableau needs at least one stage: `a` is empty")
    if not all(math.isfinite(x) for x in a_t):
        raise ValueError(f"weights `a` must be finite, got {a_t}")
    if abs(sum(a_t) - 1.0) > 1e-8:
        raise ValueError(f"weights `a` must sum to 1, got sum {sum(a_t):.10g} for a = {a_t}")
    rows = _stage_matrix(q, s)
    sums = tuple(sum(r) for r in rows)
    if p is None:
        p_t = sums
    else:
        p_t = tuple(float(x) for x in p)
        if len(p_t) != s:
            raise ValueError(f"nodes `p` must have {s} entries, got {len(p_t)}")
        for i, (pi, si) in enumerate(zip(p_t, sums)):
            if abs(pi - si) > 1e-8:
                raise ValueError(f"row sums of `q` must equal the nodes `p`: row {i} sums to {si:.10g} "
                                 f"but p[{i}] = {pi:.10g}")
    if s > 1 and p_t[1] <= 0:
        raise ValueError(f"the second node p[1] = q[1][0] must be positive (it sets the inner step), got {p_t[1]}")
    computed = _order(a_t, p_t, rows)
    if order is None:
        order = computed
    elif order > computed:
        raise ValueError(f"tableau {name!r} claims order {order} but only satisfies the order-{computed} conditions")
    return Tableau(name=name, a=a_t, p=p_t, q=tuple(rows), order=int(order))


def _stage_matrix(q: Sequence[Sequence[float]], s: int) -> list[tuple[float, ...]]:
    """``q`` as float rows, checked to be a finite, strictly lower-triangular ``s x s`` matrix."""
    rows = [tuple(float(x) for x in row) for row in q]
    if len(rows) != s or any(len(r) != s for r in rows):
        raise ValueError(f"`q` must be a {s}x{s} matrix for {s} weights, got shape "
                         f"{len(rows)}x{[len(r) for r in rows]}")
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            if not math.isfinite(v):
                raise ValueError(f"`q` must be finite, got q[{i}][{j}] = {v}")
            if j >= i and v != 0.0:
                raise ValueError(f"`q` must be strictly lower-triangular (explicit method), "
                                 f"but q[{i}][{j}] = {v} is on or above the diagonal")
    return rows


def _order(a: tuple[float, ...], c: tuple[float, ...], q: list[tuple[float, ...]]) -> int:
    """Largest order <= 4 whose Butcher conditions hold."""
    s = len(a)
    rng = range(s)

    def close(x: float, y: float) -> bool:
        return abs(x - y) < 1e-8

    if not close(sum(a), 1.0):
        return 0
    order = 1
    if close(sum(a[i] * c[i] for i in rng), 1 / 2):
        order = 2
    else:
        return order
    qc = [sum(q[i][j] * c[j] for j in rng) for i in rng]
    if close(sum(a[i] * c[i] ** 2 for i in rng), 1 / 3) and close(sum(a[i] * qc[i] for i in rng), 1 / 6):
        order = 3
    else:
        return order
    qqc = [sum(q[i][j] * qc[j] for j in rng) for i in rng]
    conds = [
        (sum(a[i] * c[i] ** 3 for i in rng), 1 / 4),
        (sum(a[i] * c[i] * qc[i] for i in rng), 1 / 8),
        (sum(a[i] * sum(q[i][j] * c[j] ** 2 for j in rng) for i in rng), 1 / 12),
        (sum(a[i] * qqc[i] for i in rng), 1 / 24),
    ]
    if all(close(x, y) for x, y in conds):
        order = 4
    return order


def generic(x: float) -> Tableau:
    """The generic second-order member: ``a = (1 - 1/(2x), 1/(2x))``, ``q21 = p2 = x``, for ``x > 0``."""
    try:
        xf = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"generic(x) needs a number, got {x!r}") from None
    if not math.isfinite(xf) or xf <= 0:
        raise ValueError(f"generic(x) needs a finite x > 0, got {x!r}")
    w2 = 1.0 / (2.0 * xf)
    return make_tableau([1.0 - w2, w2], [[0.0, 0.0], [xf, 0.0]], name=f"generic({xf:g})", order=2)


_NAMED: dict[str, Tableau] = {
    "euler": make_tableau([1.0], [[0.0]], name="euler", order=1),
    "midpoint": make_tableau([0.0, 1.0], [[0, 0], [0.5, 0]], name="midpoint", order=2),
    "heun": make_tableau([0.5, 0.5], [[0, 0], [1.0, 0]], name="heun", order=2),
    "ralston": make_tableau([1 / 3, 2 / 3], [[0, 0], [0.75, 0]], name="ralston", order=2),
    "itb": make_tableau([2 / 3, 1 / 3], [[0, 0], [1.5, 0]], name="itb", order=2),
    "kutta3": make_tableau([1 / 6, 2 / 3, 1 / 6], [[0, 0, 0], [0.5, 0, 0], [-1.0, 2.0, 0]], name="kutta3", order=3),
    "rk4": make_tableau(
        [1 / 6, 1 / 3, 1 / 3, 1 / 6],
        [[0, 0, 0, 0], [0.5, 0, 0, 0], [0, 0.5, 0, 0], [0, 0, 1.0, 0]],
        name="rk4",
        order=4,
    ),
}
_ALIASES = {"maml": "midpoint", "rk1": "euler", "pretrained": "euler", "rk4": "rk4", "rk3": "kutta3"}

#: Names accepted by :func:`get_tableau`.
TABLEAU_NAMES: tuple[str, ...] = tuple(_NAMED)
#: The five methods of the paper's tables, in its order.
PAPER_METHODS: tuple[str, ...] = ("euler", "midpoint", "heun", "ralston", "itb")

_GENERIC_RE = re.compile(r"^\s*generic\s*[(:=]?\s*([^)\s]+)\s*\)?\s*$")


def get_tableau(spec: TableauSpec) -> Tableau:
    """Return the tableau named by ``spec``.

    Args:
        spec: a name in :data:`TABLEAU_NAMES` (case-insensitive; ``maml`` is an alias of ``midpoint``),
            a positive number ``x`` or the string ``"generic(x)"`` for the generic second-order member,
            or a :class:`Tableau`, returned unchanged.

    Raises:
        ValueError: unknown name (the message lists the valid ones) or ``x <= 0``.
    """
    if isinstance(spec, Tableau):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"method must be a name or a number, got {spec!r}")
    if isinstance(spec, (int, float)):
        return generic(spec)
    if not isinstance(spec, str):
        raise ValueError(f"method must be a name, a number or a Tableau, got {type(spec).__name__}")
    key = spec.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _NAMED:
        return _NAMED[key]
    m = _GENERIC_RE.match(key)
    if m:
        return generic(m.group(1))
    try:
        return generic(float(key))
    except ValueError as err:
        if key and (key[0].isdigit() or key[0] in "+-."):
            raise err
    valid = ", ".join(TABLEAU_NAMES)
    raise ValueError(f"unknown RK method {spec!r}; valid names: {valid}, or generic(x) / a number x > 0")
