"""Per-parameter Runge-Kutta methods and inner-loop selection (``method=`` mappings and ``adapt=``).

Im, Jiang and Verma (2019, https://arxiv.org/abs/1910.07368) close by proposing different RK methods for
different layers ("the midpoint method for the last layer and Ralston, Heun's, ITB, and the gradient for the
lower layers"), in the light of ANIL (Raghu et al., 2019, https://arxiv.org/abs/1909.09157: adapt only the head).

A method spec is one of

* a tableau spec (a name such as ``"ralston"``, a number ``x`` for ``generic(x)``, a :class:`Tableau`): one
  method for every parameter, exactly the engine's uniform behaviour;
* an ordered mapping ``{pattern: tableau spec}``: each parameter takes the method of the FIRST pattern that
  matches its name; every parameter must match one, and every pattern must be the first match of some parameter;
* the string form of that mapping, ``"head.*=midpoint,*=ralston"`` (what command lines pass).

A pattern is a shell-style glob (:func:`fnmatch.fnmatchcase`: ``*``, ``?``, ``[seq]``), or several joined by
``|`` (``"w2|b2|log_std"``). ``adapt`` is ``None`` (every parameter), a pattern, a comma-separated string of
patterns, or a list of patterns: the parameters the inner loop moves.

For a parameter group ``l`` with tableau ``(a_l, q_l)`` the engine uses (:func:`step_sizes`)::

    alpha_l = 0                            l not adapted, or a one-stage tableau while some group has two stages
            = q21_l * h_l                  otherwise (tableau.inner_lr): "tableau" rule 2 q21_l inner_lr,
                                           "fixed" rule inner_lr
            = inner_lr                     one-stage tableau when NO group has two stages (the "pretrained"
                                           baseline: meta-training adapts nothing, test time fine-tunes with
                                           MAML's rate, as the uniform ``euler`` always has)
    theta'_l = theta_l - alpha_l grad_l L_S(theta)
    g_l      = a1_l grad_l L_S(theta) + a2_l d L_Q(theta'(theta)) / d theta_l      (a = (1, 0) for one stage)
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from .tableau import Tableau, TableauSpec, get_tableau

__all__ = ["MethodSpec", "AdaptSpec", "MethodMap", "ParamGroups", "parse_method_spec", "method_name", "method_slug",
           "parse_adapt", "resolve_groups", "step_sizes", "matches"]

#: A tableau spec, an ordered ``{pattern: tableau spec}`` mapping, or its string form.
MethodSpec = TableauSpec | Mapping[str, TableauSpec]
#: ``None`` (every parameter), a pattern, a comma-separated string of patterns or a list of patterns.
AdaptSpec = str | Sequence[str] | None


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches the glob ``pattern`` (or one of its ``|``-separated alternatives)."""
    return any(fnmatch.fnmatchcase(name, alt.strip()) for alt in pattern.split("|"))


@dataclass(frozen=True)
class MethodMap:
    """A parsed per-parameter method mapping: ordered ``(pattern, tableau)`` rules, first match wins."""

    rules: tuple[tuple[str, Tableau], ...]

    @property
    def stages(self) -> int:
        """The largest number of stages of the mapping's tableaus."""
        return max(t.stages for _, t in self.rules)

    @property
    def name(self) -> str:
        """The canonical string form ``"pattern=method,..."`` (parses back to an equal map)."""
        return ",".join(f"{p}={t.name}" for p, t in self.rules)

    def __str__(self) -> str:
        return self.name


def _parse_string_map(spec: str) -> list[tuple[str, str]]:
    items = [s.strip() for s in spec.split(",")]
    out: list[tuple[str, str]] = []
    for item in items:
        pattern, eq, meth = item.partition("=")
        if not item or not eq or not pattern.strip() or not meth.strip():
            raise ValueError(f"method {spec!r}: each comma-separated entry must read 'pattern=method', got {item!r}")
        out.append((pattern.strip(), meth.strip()))
    return out


def parse_method_spec(spec: MethodSpec | MethodMap) -> Tableau | MethodMap:
    """Validate a method spec: a :class:`Tableau` for one method everywhere, else a :class:`MethodMap`.

    A one-entry mapping whose pattern is ``"*"`` is the uniform method (returned as its :class:`Tableau`).

    Raises:
        ValueError: unknown method (naming the pattern and listing valid names), an empty mapping, an entry
            that is not ``pattern=method``, an empty pattern, or a repeated pattern.
    """
    if isinstance(spec, MethodMap):
        return spec
    if isinstance(spec, str):
        try:
            return get_tableau(spec)
        except ValueError as err:
            if "=" not in spec:
                raise err
        pairs: list[tuple[str, TableauSpec]] = list(_parse_string_map(spec))
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        return get_tableau(spec)
    if not pairs:
        raise ValueError("method mapping is empty: give at least one 'pattern=method' entry")
    rules: list[tuple[str, Tableau]] = []
    seen: set[str] = set()
    for pattern, meth in pairs:
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"method mapping: patterns must be non-empty strings, got {pattern!r}")
        if pattern in seen:
            raise ValueError(f"method mapping: pattern {pattern!r} is given twice")
        seen.add(pattern)
        try:
            tab = get_tableau(meth)
        except ValueError as err:
            raise ValueError(f"method mapping, pattern {pattern!r}: {err}") from None
        rules.append((pattern, tab))
    if len(rules) == 1 and rules[0][0] == "*":
        return rules[0][1]
    return MethodMap(tuple(rules))


def method_name(spec: MethodSpec | MethodMap) -> str:
    """A canonical label for logs, checkpoints and ``metrics.json``: the tableau's name, or the mapping's
    ``"pattern=method,..."`` string."""
    return parse_method_spec(spec).name


def method_slug(spec: MethodSpec | MethodMap, adapt: AdaptSpec = None) -> str:
    """A file-name-safe label of a method spec and ``adapt`` (run folders): ``"fc.*=midpoint,*=ralston"`` ->
    ``"fc.all-midpoint_all-ralston"``; a uniform method keeps its plain name (``"ralston"``)."""
    label = method_name(spec)
    pats = parse_adapt(adapt)
    if pats is not None:
        label += "_adapt-" + "+".join(pats)
    label = label.replace("*", "all").replace("=", "-").replace(",", "_").replace("|", "+")
    return re.sub(r"[^A-Za-z0-9_.()+-]", "", label)


def parse_adapt(adapt: AdaptSpec) -> tuple[str, ...] | None:
    """``adapt`` as a tuple of patterns (``None``: every parameter).

    Raises:
        ValueError: an empty string or list, or a non-string entry.
    """
    if adapt is None:
        return None
    if isinstance(adapt, str):
        pats = tuple(p.strip() for p in adapt.split(","))
    else:
        pats = tuple(adapt)
        if not all(isinstance(p, str) for p in pats):
            raise ValueError(f"adapt must be a pattern or a list of patterns, got {adapt!r}")
        pats = tuple(p.strip() for p in pats)
    if not pats or any(not p for p in pats):
        raise ValueError(f"adapt must name at least one non-empty parameter pattern, got {adapt!r}")
    return pats


@dataclass(frozen=True)
class ParamGroups:
    """Per-parameter tableaus and adaptation flags (in the parameters' order).

    Attributes:
        names: parameter names.
        tableaus: each parameter's tableau.
        adapted: whether the inner loop moves each parameter.
    """

    names: tuple[str, ...]
    tableaus: tuple[Tableau, ...]
    adapted: tuple[bool, ...]

    @property
    def stages(self) -> int:
        """The largest number of stages."""
        return max(t.stages for t in self.tableaus)

    @property
    def tableau(self) -> Tableau | None:
        """The common tableau when every parameter has the same one, else ``None``."""
        first = self.tableaus[0]
        return first if all(t == first for t in self.tableaus) else None

    @property
    def uniform(self) -> bool:
        """One tableau for every parameter and every parameter adapted: the engine's plain behaviour."""
        return self.tableau is not None and all(self.adapted)

    def weights(self) -> list[dict[str, float]]:
        """Per stage ``i``, ``{name: a_i}`` for the parameter's tableau; a one-stage tableau next to two-stage
        ones has ``a = (1, 0)``. Raises for mixed tableaus where some has more than two stages."""
        s = self.stages
        if s > 2 and self.tableau is None:
            kinds = sorted({t.name for t in self.tableaus})
            raise ValueError(f"per-parameter methods with more than two stages need the same tableau for every "
                             f"parameter (stage points of different tableaus are not defined together); got "
                             f"{', '.join(kinds)}")
        return [{n: (t.a[i] if i < t.stages else 0.0) for n, t in zip(self.names, self.tableaus)}
                for i in range(s)]

    def step_sizes(self, inner_lr: float, step_rule: str = "tableau") -> dict[str, float]:
        """``{name: alpha_l}`` by the rule in the module docstring."""
        if not (isinstance(inner_lr, (int, float)) and math.isfinite(inner_lr) and inner_lr > 0):
            raise ValueError(f"inner_lr must be a finite number > 0, got {inner_lr!r}")
        if step_rule not in ("tableau", "fixed"):
            raise ValueError(f"step_rule must be 'tableau' or 'fixed', got {step_rule!r}")
        any_two = self.stages > 1
        out: dict[str, float] = {}
        for n, t, a in zip(self.names, self.tableaus, self.adapted):
            if not a or (t.stages == 1 and any_two):
                out[n] = 0.0
            else:
                out[n] = t.inner_lr(float(inner_lr), step_rule)
        return out


def resolve_groups(names: Sequence[str], method: MethodSpec | MethodMap, adapt: AdaptSpec = None) -> ParamGroups:
    """Assign every parameter its tableau and adaptation flag.

    Args:
        names: the parameter names, in order.
        method: a method spec (module docstring).
        adapt: which parameters the inner loop moves (default: all).

    Raises:
        ValueError: a parameter no pattern matches (listing them), a pattern that is no parameter's first
            match, an empty ``adapt``, or an ``adapt`` pattern that matches no parameter.
    """
    names = tuple(names)
    if not names:
        raise ValueError("no parameters")
    spec = parse_method_spec(method)
    if isinstance(spec, Tableau):
        tabs = tuple(spec for _ in names)
    else:
        chosen: list[Tableau | None] = []
        used: set[str] = set()
        for n in names:
            hit = next(((p, t) for p, t in spec.rules if matches(p, n)), None)
            chosen.append(None if hit is None else hit[1])
            if hit is not None:
                used.add(hit[0])
        unmatched = [n for n, t in zip(names, chosen) if t is None]
        if unmatched:
            raise ValueError(f"method {spec.name!r}: no pattern matches parameter(s) {unmatched} "
                             f"(add a catch-all entry such as '*=ralston')")
        unused = [p for p, _ in spec.rules if p not in used]
        if unused:
            raise ValueError(f"method {spec.name!r}: pattern(s) {unused} are the first match of no parameter "
                             f"(parameters: {list(names)})")
        tabs = tuple(t for t in chosen if t is not None)
    pats = parse_adapt(adapt)
    if pats is None:
        flags = tuple(True for _ in names)
    else:
        flags = tuple(any(matches(p, n) for p in pats) for n in names)
        if not any(flags):
            raise ValueError(f"adapt={adapt!r} matches no parameter (parameters: {list(names)})")
        dead = [p for p in pats if not any(matches(p, n) for n in names)]
        if dead:
            raise ValueError(f"adapt: pattern(s) {dead} match no parameter (parameters: {list(names)})")
    return ParamGroups(names, tabs, flags)


def step_sizes(names: Sequence[str], method: MethodSpec | MethodMap, inner_lr: float, step_rule: str = "tableau",
               adapt: AdaptSpec = None) -> dict[str, float]:
    """Per-parameter inner step sizes ``{name: alpha_l}`` (module docstring), for training and test-time
    adaptation alike (``rk.adapt_and_score(..., lr=step_sizes(...))``)."""
    return resolve_groups(names, method, adapt).step_sizes(inner_lr, step_rule)
