"""The paired test and Holm's correction against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrcom_lightning.stats import holm, paired_p_value


def test_holm_matches_a_hand_computation():
    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    assert holm([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # capped by monotonicity, not above 1
    assert holm([0.9, 0.8, 0.7]) == pytest.approx([1.0, 1.0, 1.0])
    out = holm([0.01, float("nan"), 0.04])  # nan is no comparison: m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_paired_p_value_matches_the_t_statistic_of_the_differences():
    a, b = [10.0, 12.0, 9.0, 14.0, 11.0], [8.0, 11.0, 9.5, 10.0, 9.0]
    d = np.subtract(a, b)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    from scipy import stats

    assert paired_p_value(a, b) == pytest.approx(2 * stats.t.sf(abs(t), len(d) - 1), rel=1e-9)
    assert math.isnan(paired_p_value([1.0], [2.0])) and math.isnan(paired_p_value([1.0, 2.0], [0.0, 1.0]))
    with pytest.raises(ValueError, match="same length"):
        paired_p_value([1.0, 2.0], [1.0])
