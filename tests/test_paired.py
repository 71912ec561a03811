"""experiments/paired.py: paired statistics against values worked out by hand."""

import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from experiments import paired  # noqa: E402


def test_t_interval_and_signed_rank_of_five_positive_differences():
    # mean 3, sd sqrt(2.5); t_{0.975, 4} = 2.776445 (table value); exact signed-rank p for five
    # positive differences without ties: two of the 2^5 sign patterns are as extreme, 2/32.
    p = paired.paired_stats([1.0, 2.0, 3.0, 4.0, 5.0], scale=1.0)
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert p["mean"] == pytest.approx(3.0) and p["sd"] == pytest.approx(math.sqrt(2.5))
    assert p["ci_low"] == pytest.approx(3.0 - half, rel=1e-6)
    assert p["ci_high"] == pytest.approx(3.0 + half, rel=1e-6)
    assert p["p_signed_rank"] == pytest.approx(2 / 32)
    assert (p["positive"], p["cells"], p["verdict"]) == (5, 5, "higher")


def test_an_interval_across_zero_names_the_effect_it_excludes():
    # mean 0.005; squared deviations 0.015², 0.01², 0.005², 0.01² sum to 4.5e-4, so sd =
    # sqrt(4.5e-4 / 3); half-width t_{0.975, 3} = 3.182446 times sd / sqrt(4).
    diffs = [0.02, -0.005, 0.01, -0.005]
    p = paired.paired_stats(diffs)
    half = 3.182446 * math.sqrt(4.5e-4 / 3) / 2
    assert p["ci_high"] == pytest.approx(0.005 + half, rel=1e-5)
    assert (
        p["verdict"] == f"no effect detected (|effect| above {100 * (0.005 + half):.2f} excluded)"
    )
    assert paired.paired_stats([-1.0, -1.1, -1.2])["verdict"] == "lower"


def test_one_cell_and_all_zero_differences():
    one = paired.paired_stats([0.01])
    assert math.isnan(one["ci_low"]) and one["verdict"] == "one cell: no interval"
    assert paired.fmt_interval(one) == "+1.00"
    zeros = paired.paired_stats([0.0, 0.0, 0.0])
    assert math.isnan(zeros["p_signed_rank"]) and zeros["positive"] == 0
    assert paired.fmt_p(zeros["p_signed_rank"]) == "-" and paired.fmt_p(0.0004) == "< 0.001"


def test_interval_format():
    p = paired.paired_stats([0.01, 0.02, 0.03])
    assert paired.fmt_interval(p) == (
        f"+2.00 [{100 * p['ci_low']:+.2f}, {100 * p['ci_high']:+.2f}]"
    )
