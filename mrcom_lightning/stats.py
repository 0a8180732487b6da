"""The statistics every comparison in the project reports: paired tests over shared seeds and
Holm's correction for the number of comparisons in one report (DESIGN.md §4–5)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def paired_p_value(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test between `a` and `b`, matched element by element (the
    same seed, target and world model); nan with fewer than two pairs or no spread in the differences."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need the same length, got {len(a)} and {len(b)}")
    if len(a) < 2 or np.var(a - b) == 0:
        return float("nan")
    return float(stats.ttest_rel(a, b).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input's order: the k-th smallest of m is multiplied
    by m − k + 1, made monotone and capped at 1. nan stays nan and does not count as a comparison."""
    p = np.asarray(p_values, float)
    adjusted = np.full(len(p), np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m, running = len(valid), 0.0
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
