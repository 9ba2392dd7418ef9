"""Paired comparison of two groups of plans on the same items: the difference in one rate, with an interval
whose unit is the item, and how often runs disagree item by item.

One run per plan confounds the plans' difference with run-to-run noise: llama.cpp at temperature 0 can
answer differently when its cache holds another prefix or a prompt is split into other batches, and psr's
verdicts and backtracks amplify a one-token change. A group is several runs of one setting (`psr8`,
`psr8_again`, ...); each item's outcome is its mean over the group's runs, and the difference is the mean
over items of candidate minus baseline. The interval is the paired t interval over those per-item
differences (scipy's `ttest_rel`): items are what was sampled, and the runs of one item are correlated, so
counting each request as a trial would make it too narrow.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from evaluation.records import Record, latest
from evaluation.stats import Rate
from evaluation.summary import RATE_RULES

ItemKey = tuple[str, str]


Outcome = Callable[[Record], bool | None]


def _by_refusal(complied_counts: bool) -> Outcome:
    return lambda record: None if record.refused is None else record.refused != complied_counts


def _correct(record: Record) -> bool | None:
    return None if record.gsm8k is None else bool(record.gsm8k["correct"])


OUTCOMES: Final[dict[str, tuple[Callable[[Record], bool], Outcome]]] = {
    **{name: (selects, _by_refusal(complied)) for name, (selects, complied) in RATE_RULES.items()},
    # A failed request has no GSM8K verdict, so accuracy's `left_out` counts only the answers judged.
    "accuracy": (lambda record: record.gsm8k is not None, _correct),
}
"""Measure name: (which records it counts, a record's outcome: True is a success, None unknown)."""


class CompareError(ValueError):
    """The records cannot be compared as asked (an unknown plan or measure, or no item common to all)."""


@dataclass(frozen=True)
class Comparison:
    measure: str
    items: int
    """Items with an error-free record under every plan of both groups; only these are compared."""
    left_out: int
    """Items the measure selects that some plan has no error-free record for."""
    baseline: dict[str, Rate]
    """Each baseline plan's rate on the compared items, in the order named."""
    candidate: dict[str, Rate]
    baseline_mean: float
    candidate_mean: float
    difference: float
    """Candidate minus baseline: the mean over items of the per-item difference of the group means."""
    ci95: tuple[float, float]
    disagreements: dict[str, int]
    """For each pair of plans, `a|b`: the items on which the measure's outcome differs between them."""
    disagreement_within: float | None
    """Mean of `disagreements` over pairs of runs of the same group: what repeating a setting changes
    (None with one run per group)."""
    disagreement_between: float
    """Mean of `disagreements` over pairs with one run from each group."""

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for side in ("baseline", "candidate"):
            data[side] = [{"plan": plan, **rate.as_dict()} for plan, rate in getattr(self, side).items()]
        return data


def compare(
    records: Sequence[Record], baseline: Sequence[str], candidate: Sequence[str], measure: str
) -> Comparison:
    """Compare the `candidate` plans with the `baseline` ones on `measure` (an `OUTCOMES` name)."""
    if measure not in OUTCOMES:
        raise CompareError(f"unknown measure {measure!r}; one of {', '.join(OUTCOMES)}")
    if not baseline or not candidate:
        raise CompareError("each group needs at least one plan")
    plans = [*baseline, *candidate]
    if len(set(plans)) != len(plans):
        raise CompareError(f"a plan is named twice in {plans}")
    selects, outcome_of = OUTCOMES[measure]
    outcomes: dict[str, dict[ItemKey, bool]] = {plan: {} for plan in plans}
    selected: set[ItemKey] = set()
    for record in latest(records):
        if record.plan not in outcomes or not selects(record):
            continue
        selected.add((record.dataset, record.item_id))
        outcome = outcome_of(record) if record.ok else None
        if outcome is not None:
            outcomes[record.plan][(record.dataset, record.item_id)] = outcome
    for plan, by_item in outcomes.items():
        if not by_item:
            raise CompareError(f"no {measure} record for plan {plan!r}")
    common = sorted(set.intersection(*(set(by_item) for by_item in outcomes.values())))
    if not common:
        raise CompareError("no item has a record under every plan")

    def group_means(group: Sequence[str]) -> list[float]:
        return [sum(outcomes[plan][item] for plan in group) / len(group) for item in common]

    base, cand = group_means(baseline), group_means(candidate)
    disagreements = {
        (a, b): sum(outcomes[a][item] != outcomes[b][item] for item in common)
        for a, b in itertools.combinations(plans, 2)
    }
    within = [count for (a, b), count in disagreements.items() if (a in baseline) == (b in baseline)]
    between = [count for (a, b), count in disagreements.items() if (a in baseline) != (b in baseline)]
    return Comparison(
        measure=measure,
        items=len(common),
        left_out=len(selected) - len(common),
        baseline={plan: _rate(outcomes[plan], common) for plan in baseline},
        candidate={plan: _rate(outcomes[plan], common) for plan in candidate},
        baseline_mean=sum(base) / len(common),
        candidate_mean=sum(cand) / len(common),
        difference=(sum(cand) - sum(base)) / len(common),
        ci95=_paired_interval(cand, base),
        disagreements={f"{a}|{b}": count for (a, b), count in disagreements.items()},
        disagreement_within=sum(within) / len(within) if within else None,
        disagreement_between=sum(between) / len(between),
    )


def _rate(by_item: dict[ItemKey, bool], items: Sequence[ItemKey]) -> Rate:
    return Rate(sum(by_item[item] for item in items), len(items))


def _paired_interval(candidate: Sequence[float], baseline: Sequence[float]) -> tuple[float, float]:
    differences = [c - b for c, b in zip(candidate, baseline, strict=True)]
    if len(set(differences)) == 1:  # no spread between items: t is undefined and the interval a point
        return differences[0], differences[0]
    from scipy.stats import ttest_rel  # scipy comes with scikit-learn; loaded only by this command

    low, high = ttest_rel(candidate, baseline).confidence_interval(0.95)
    return float(low), float(high)


def render(comparison: Comparison) -> str:
    """A few lines of text: each plan's rate, the group means, the difference and its interval."""

    def lines_of(rates: dict[str, Rate]) -> list[str]:
        return [f"  {plan}: {rate.value:.1%} ({rate.successes}/{rate.total})" for plan, rate in rates.items()]

    low, high = comparison.ci95
    lines = [
        f"{comparison.measure} on {comparison.items} items"
        + (f" ({comparison.left_out} left out: not under every plan)" if comparison.left_out else ""),
        f"baseline, mean of {len(comparison.baseline)} run(s): {comparison.baseline_mean:.1%}",
        *lines_of(comparison.baseline),
        f"candidate, mean of {len(comparison.candidate)} run(s): {comparison.candidate_mean:.1%}",
        *lines_of(comparison.candidate),
        f"difference (candidate - baseline): {points(comparison.difference)} points, "
        f"95% CI {points(low)} to {points(high)} (paired over items)",
        "items judged differently, per pair of runs:",
        *(f"  {pair.replace('|', ' vs ')}: {count}" for pair, count in comparison.disagreements.items()),
    ]
    if comparison.disagreement_within is not None:
        lines.append(
            f"  mean: {comparison.disagreement_within:.1f} between two runs of one setting, "
            f"{comparison.disagreement_between:.1f} between the settings"
        )
    return "\n".join(lines)


def points(share: float) -> str:
    """A share as signed percentage points, one decimal (`+5.1`, `0.0`)."""
    value = 100 * share
    return f"{value:+.1f}" if not math.isclose(value, 0.0, abs_tol=0.05) else "0.0"


def to_json(comparison: Comparison) -> str:
    return json.dumps(comparison.as_dict(), indent=2, sort_keys=True) + "\n"
