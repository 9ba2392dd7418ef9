"""Wilson intervals and percentiles against published values and numpy."""

from __future__ import annotations

import random

import numpy as np
import pytest

from evaluation.stats import Rate, mean_known, percentile, rate, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Published Wilson 95% values; at k = 0 the upper bound is z²/(n + z²) exactly.
        (0, 10, 0.0, 0.27753),
        (10, 10, 0.72247, 1.0),
        (5, 10, 0.23659, 0.76341),
        (1, 20, 0.00889, 0.23613),
    ],
)
def test_wilson_matches_reference_values(k: int, n: int, low: float, high: float) -> None:
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=5e-5)


def test_wilson_is_symmetric_and_contains_the_rate() -> None:
    for n in (1, 7, 30):
        for k in range(n + 1):
            low, high = wilson_interval(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0
            mirrored = wilson_interval(n - k, n)
            assert low == pytest.approx(1 - mirrored[1])


def test_wilson_rejects_impossible_counts() -> None:
    for k, n in ((0, 0), (3, 2), (-1, 4)):
        with pytest.raises(ValueError, match=r"trial|between 0 and total"):
            wilson_interval(k, n)


def test_rate_dict() -> None:
    entry = Rate(3, 4).as_dict()
    assert (entry["k"], entry["n"], entry["rate"]) == (3, 4, 0.75)
    assert entry["ci95_low"] < 0.75 < entry["ci95_high"]
    assert rate([]) is None
    assert rate([True, False, True]) == Rate(2, 3)


def test_percentile_matches_numpy() -> None:
    generator = random.Random(3)
    for size in (1, 2, 5, 20, 101):
        values = [generator.uniform(0, 10) for _ in range(size)]
        for q in (0, 50, 95, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_mean_known_ignores_unknowns() -> None:
    assert mean_known([1.0, None, 3.0]) == 2.0
    assert mean_known([None, None]) is None
