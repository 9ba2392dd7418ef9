"""Welch's confidence interval for a difference of two means, from running sums.

Student's t quantile is scipy's `special.stdtrit` (the inverse of the t distribution's CDF, fractional
degrees of freedom allowed): 1.3 us a call, and importing `scipy.special` adds 18 MB to a worker where
`scipy.stats` (whose `t.ppf` wraps the same function) would add 69 MB and took 43 us (`python -m timeit`,
df 17.3, 2026-12-06). A hand-written inverse stood here before; it took 354 us.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.special import stdtrit


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


def t_quantile(p: float, df: float) -> float:
    """The t value below which a fraction `p` of Student's t with `df` (possibly fractional) degrees lies."""
    return float(stdtrit(df, p))


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
