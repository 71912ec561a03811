"""Paired comparison of two methods over the same (split, seed) cells.

``paired_stats(diffs)`` summarises the differences ``method - baseline`` of one measure:

- mean and sample std (ddof 1);
- a 95 % confidence interval of the mean difference, Student's t over the cells
  (``mean ± t_{0.975, n-1} · sd / sqrt(n)``): it treats the cells as independent draws, which the
  splits and seeds of a grid approximate;
- the two-sided Wilcoxon signed-rank p (``scipy.stats.wilcoxon``: exact for small n without ties,
  zero differences dropped), which does not assume normal differences;
- how many cells are positive.

The verdict comes from the interval: "higher" or "lower" where it excludes 0, otherwise
"no effect detected (|effect| above X excluded)", X being the interval's larger end in absolute
value. With one cell there is no interval.
"""

from __future__ import annotations

import math
from typing import Any

#: Confidence level of the interval.
CONFIDENCE = 0.95


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; nan for fewer than two values)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def t_interval(mean: float, sd: float, n: int) -> tuple[float, float]:
    """The two-sided ``CONFIDENCE`` t-interval of a mean of n values with sample std sd."""
    if n < 2 or math.isnan(sd):
        return math.nan, math.nan
    from scipy import stats

    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def signed_rank_p(diffs: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of the differences (nan when none is non-zero)."""
    if not any(d != 0 for d in diffs):
        return math.nan
    from scipy import stats

    return float(stats.wilcoxon(diffs).pvalue)


def verdict(low: float, high: float, scale: float = 100.0, unit: str = "") -> str:
    """'higher' / 'lower' where the interval excludes 0, else what it excludes."""
    if math.isnan(low):
        return "one cell: no interval"
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    bound = scale * max(abs(low), abs(high))
    return f"no effect detected (|effect| above {bound:.2f}{unit} excluded)"


def paired_stats(diffs: list[float], scale: float = 100.0, unit: str = "") -> dict[str, Any]:
    """Statistics of paired differences (see the module docstring).

    ``scale`` and ``unit`` only word the verdict (AUROC differences are stored as fractions and
    read in points: scale 100).
    """
    m, s = mean_sd(diffs)
    low, high = t_interval(m, s, len(diffs))
    return {
        "mean": m,
        "sd": s,
        "ci_low": low,
        "ci_high": high,
        "p_signed_rank": signed_rank_p(diffs),
        "positive": sum(d > 0 for d in diffs),
        "cells": len(diffs),
        "verdict": verdict(low, high, scale, unit),
    }


def fmt_interval(p: dict[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    """'+0.55 [−0.04, +1.14]' (scaled), or the mean alone when there is no interval."""
    if math.isnan(p["mean"]):
        return "-"
    mean = f"{scale * p['mean']:+.{digits}f}"
    if math.isnan(p["ci_low"]):
        return mean
    return f"{mean} [{scale * p['ci_low']:+.{digits}f}, {scale * p['ci_high']:+.{digits}f}]"


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "-"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
