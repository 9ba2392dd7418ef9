"""Welch's interval and the t quantile it uses, against textbook values and a direct computation."""

from __future__ import annotations

import math
import statistics

import pytest

from app.experiments.welch import Sample, t_quantile, welch_interval


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (30, 2.0423), (1000, 1.9623)],
)
def test_t_quantile_matches_tables(df: float, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)


def sample(values: list[float]) -> Sample:
    return Sample(count=len(values), total=sum(values), squares=sum(v * v for v in values))


def test_welch_interval_from_sums_equals_the_direct_formula() -> None:
    control = [0.1, 0.4, 0.35, 0.2, 0.5, 0.3]
    variant = [0.7, 0.9, 0.6, 0.8, 1.0, 0.75, 0.65, 0.85]
    interval = welch_interval(sample(variant), sample(control))
    assert interval is not None
    v1, v2 = statistics.variance(variant) / len(variant), statistics.variance(control) / len(control)
    df = (v1 + v2) ** 2 / (v1**2 / (len(variant) - 1) + v2**2 / (len(control) - 1))
    difference = statistics.mean(variant) - statistics.mean(control)
    half = t_quantile(0.975, df) * math.sqrt(v1 + v2)
    assert interval.df == pytest.approx(df)
    assert interval.difference == pytest.approx(difference)
    assert (interval.low, interval.high) == pytest.approx((difference - half, difference + half))
    assert interval.low > 0  # these two samples differ clearly


def test_no_interval_without_two_observations_or_spread() -> None:
    assert welch_interval(sample([1.0]), sample([0.0, 1.0])) is None
    assert welch_interval(sample([1.0, 1.0]), sample([0.0, 0.0])) is None
    assert sample([]).mean is None
