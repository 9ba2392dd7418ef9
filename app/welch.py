"""Welch's confidence interval for a difference of two means, from running sums. Pure; no scipy at serving.

Student's t quantile comes from the regularized incomplete beta function (the continued fraction of
Numerical Recipes §6.4), inverted by bisection: exact enough for a confidence interval at any degrees of
freedom, including the fractional ones the Welch–Satterthwaite formula gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    """A sample summarised as count, sum and sum of squares (what Redis counters can keep atomically)."""

    count: int
    total: float
    squares: float

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    @property
    def variance(self) -> float | None:
        """Unbiased sample variance; None below two observations."""
        if self.count < 2:
            return None
        return max(0.0, (self.squares - self.total * self.total / self.count) / (self.count - 1))


@dataclass(frozen=True, slots=True)
class Interval:
    difference: float
    low: float
    high: float
    df: float


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value below which a fraction `p` (in (0.5, 1)) of Student's t with `df` degrees lies."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-10:
            break
    return (low + high) / 2.0


def welch_interval(variant: Sample, control: Sample, confidence: float = 0.95) -> Interval | None:
    """CI of mean(variant) − mean(control); None until each side has two observations and some spread."""
    v_var, c_var = variant.variance, control.variance
    if v_var is None or c_var is None or variant.mean is None or control.mean is None:
        return None
    v_term, c_term = v_var / variant.count, c_var / control.count
    se2 = v_term + c_term
    if se2 <= 0.0:
        return None
    df = se2 * se2 / (v_term * v_term / (variant.count - 1) + c_term * c_term / (control.count - 1))
    half = t_quantile(0.5 + confidence / 2.0, df) * math.sqrt(se2)
    difference = variant.mean - control.mean
    return Interval(difference=difference, low=difference - half, high=difference + half, df=df)
