"""Small-sample statistics: rates with Wilson score intervals, percentiles, means of what is known."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

Z_95: Final = 1.959963984540054


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for `successes` of `total`; it stays inside [0, 1] and is sane at 0 or n.

    The normal approximation collapses to a zero-width interval at 0/n or n/n, which is exactly where small
    safety samples land; Wilson does not.
    """
    if total <= 0:
        raise ValueError("an interval needs at least one trial")
    if not 0 <= successes <= total:
        raise ValueError("successes must lie between 0 and total")
    p = successes / total
    z2 = z * z
    denominator = 1 + z2 / total
    centre = (p + z2 / (2 * total)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / denominator
    # At 0/n and n/n the bound is exactly 0 or 1; rounding would leave it a hair inside.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == total else min(1.0, centre + half_width)
    return low, high


@dataclass(frozen=True)
class Rate:
    successes: int
    total: int

    @property
    def value(self) -> float:
        return self.successes / self.total

    def as_dict(self) -> dict[str, float | int]:
        low, high = wilson_interval(self.successes, self.total)
        return {"k": self.successes, "n": self.total, "rate": self.value, "ci95_low": low, "ci95_high": high}


def rate(flags: Iterable[bool]) -> Rate | None:
    values = list(flags)
    return Rate(sum(values), len(values)) if values else None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    lower = math.floor(position)
    upper = math.ceil(position)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def mean_known(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None
