"""Butcher tableaus: the named members, the generic family, and validation errors."""

import dataclasses
import math

import pytest

from rkmeta_rl.rk import PAPER_METHODS, TABLEAU_NAMES, generic, get_tableau, make_tableau

SECOND_ORDER = {"midpoint": (0.0, 1.0, 0.5), "heun": (0.5, 0.5, 1.0), "ralston": (1 / 3, 2 / 3, 0.75),
                "itb": (2 / 3, 1 / 3, 1.5)}


@pytest.mark.parametrize("name", list(SECOND_ORDER))
def test_second_order_members(name: str) -> None:
    a1, a2, q21 = SECOND_ORDER[name]
    t = get_tableau(name)
    assert t.a == pytest.approx((a1, a2)) and t.q[1][0] == pytest.approx(q21) and t.p == pytest.approx((0, q21))
    assert t.order == 2 and t.stages == 2
    assert t.a[1] * t.q[1][0] == pytest.approx(0.5)
    # generic(x) reproduces it
    g = generic(q21)
    assert g.a == pytest.approx(t.a) and g.q == t.q


def test_names_and_orders() -> None:
    assert set(PAPER_METHODS) <= set(TABLEAU_NAMES)
    assert get_tableau("euler").order == 1 and get_tableau("euler").stages == 1
    assert get_tableau("kutta3").order == 3 and get_tableau("kutta3").stages == 3
    assert get_tableau("rk4").order == 4 and get_tableau("rk4").stages == 4
    assert get_tableau("MAML") is get_tableau("midpoint")
    assert get_tableau(" Ralston ") is get_tableau("ralston")
    assert get_tableau("generic(0.6)").q[1][0] == pytest.approx(0.6)
    assert get_tableau("0.6").a == get_tableau(0.6).a
    t = get_tableau("rk4")
    assert get_tableau(t) is t
    for name in TABLEAU_NAMES:
        tab = get_tableau(name)
        assert math.isclose(sum(tab.a), 1.0)
        for i, row in enumerate(tab.q):
            assert math.isclose(sum(row), tab.p[i], abs_tol=1e-12)


def test_inner_learning_rates() -> None:
    # tableau rule: alpha = q21 * h with h = 2 alpha_MAML, so midpoint adapts with exactly alpha_MAML
    assert get_tableau("midpoint").inner_lr(0.01) == pytest.approx(0.01)
    assert get_tableau("heun").inner_lr(0.01) == pytest.approx(0.02)
    assert get_tableau("ralston").inner_lr(0.01) == pytest.approx(0.015)
    assert get_tableau("itb").inner_lr(0.01) == pytest.approx(0.03)
    for name in ("midpoint", "heun", "ralston", "itb", "kutta3", "rk4"):
        assert get_tableau(name).inner_lr(0.01, "fixed") == pytest.approx(0.01)
    with pytest.raises(ValueError, match="step_rule"):
        get_tableau("heun").inner_lr(0.01, "adaptive")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        get_tableau("rk45")
    for name in TABLEAU_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("x", [0, -0.5, float("nan"), float("inf"), "-1", "generic(0)"])
def test_generic_rejects_non_positive(x) -> None:
    with pytest.raises(ValueError, match="x > 0|finite"):
        get_tableau(x)


def test_invalid_tableaus() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        make_tableau([0.5, 0.6], [[0, 0], [0.5, 0]])
    with pytest.raises(ValueError, match="strictly lower-triangular"):
        make_tableau([0.5, 0.5], [[0, 0.1], [1.0, 0]])
    with pytest.raises(ValueError, match="strictly lower-triangular"):
        make_tableau([0.5, 0.5], [[0.2, 0], [1.0, 0]])
    with pytest.raises(ValueError, match="row sums"):
        make_tableau([0.5, 0.5], [[0, 0], [1.0, 0]], p=[0, 0.9])
    with pytest.raises(ValueError, match="2x2|matrix"):
        make_tableau([0.5, 0.5], [[0, 0, 0], [1.0, 0, 0]])
    with pytest.raises(ValueError, match="order"):
        make_tableau([0.5, 0.5], [[0, 0], [0.5, 0]], order=2)
    with pytest.raises(ValueError):
        get_tableau(True)
    with pytest.raises(ValueError):
        get_tableau(None)  # type: ignore[arg-type]


def test_tableau_is_frozen() -> None:
    t = get_tableau("heun")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.a = (1.0, 0.0)  # type: ignore[misc]
