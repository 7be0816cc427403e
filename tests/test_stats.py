"""Student-t intervals: table values, the large-df expansion, and a hand-computed interval."""

import math

import numpy as np
import pytest

from rkmeta_rl.stats import mean_interval, t_quantile_975


def test_t_table_values() -> None:
    assert t_quantile_975(2) == pytest.approx(4.303, abs=1e-3)  # n = 3 seeds
    assert t_quantile_975(1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile_975(10) == pytest.approx(2.228, abs=1e-3)


def test_expansion_joins_the_table_and_tends_to_normal() -> None:
    # the expansion evaluated at df = 30 agrees with the table there, and is monotone towards 1.96
    z = 1.959963984540054
    at30 = (z + (z ** 3 + z) / 120 + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * 900)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * 27000))
    assert at30 == pytest.approx(t_quantile_975(30), abs=1e-3)
    assert t_quantile_975(40) == pytest.approx(2.021, abs=1e-3)
    assert t_quantile_975(120) == pytest.approx(1.980, abs=1e-3)
    assert t_quantile_975(31) < t_quantile_975(30)
    assert abs(t_quantile_975(10 ** 6) - z) < 1e-5
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_mean_interval_by_hand() -> None:
    vals = [1.0, 2.0, 4.0]
    mean, half, n = mean_interval(vals)
    s = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    assert n == 3 and mean == pytest.approx(7 / 3)
    assert half == pytest.approx(4.303 * s / math.sqrt(3))
    assert math.isnan(mean_interval([2.0])[1])
    m, h, _ = mean_interval([1.0, np.inf, 2.0])
    assert not math.isfinite(m) and math.isnan(h)
