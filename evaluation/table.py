"""`twice eval-table`: the one table an evaluation is read by: a row per plan, a column per set and measure,
each plan's difference from a baseline plan with its paired interval, and what each plan costs.

Columns come from the records: each dataset with the measures its labels call for (a set with reference
answers, GSM8K, by accuracy alone), and the jailbreak sets pooled when there are two or more. A rate is the
plan's own over its error-free records; a difference is `compare` between the plan and the baseline, on the
items both answered, with the paired 95% interval over items. Cost is over every set of the table: summed
wall time against the baseline's on the same items, and means per request of backend calls, psr rounds used
and hidden tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from evaluation.compare import OUTCOMES, CompareError, compare, points
from evaluation.records import Record, latest
from evaluation.stats import Rate
from evaluation.summary import cost, format_rate

POOLS: Final[dict[str, str]] = {"jailbreaks": "jailbreak_"}
"""A column over every dataset whose name starts with the prefix, when two or more do."""
TITLES: Final[dict[str, str]] = {
    "attack_success": "attack success",
    "unsafe_compliance": "unsafe compliance",
    "over_refusal": "over-refusal",
    "accuracy": "accuracy",
}


class TableError(ValueError):
    """The records cannot make the table asked for (no records, or the baseline plan has none)."""


@dataclass(frozen=True)
class Column:
    name: str
    """A dataset, or a pool's name."""
    measure: str
    datasets: tuple[str, ...]

    @property
    def title(self) -> str:
        return f"{self.name}: {TITLES[self.measure]}"


@dataclass(frozen=True)
class Cell:
    rate: Rate
    difference: float | None = None
    """Plan minus baseline on the items both answered; None for the baseline itself."""
    ci95: tuple[float, float] | None = None


@dataclass(frozen=True)
class PlanCost:
    wall_vs_baseline: float | None
    """Summed latency over the items the plan and the baseline both answered, over the baseline's."""
    backend_calls: float | None
    rounds_used: float | None
    hidden_tokens: float | None


@dataclass(frozen=True)
class Table:
    baseline: str
    plans: tuple[str, ...]
    columns: tuple[Column, ...]
    cells: dict[str, dict[str, Cell]]
    """Plan, then column title."""
    cost: dict[str, PlanCost]

    def as_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "plans": list(self.plans),
            "columns": [{"title": c.title, **asdict(c)} for c in self.columns],
            "cells": {
                plan: {
                    title: {**cell.rate.as_dict(), "difference": cell.difference, "ci95": cell.ci95}
                    for title, cell in row.items()
                }
                for plan, row in self.cells.items()
            },
            "cost": {plan: asdict(each) for plan, each in self.cost.items()},
        }


def _measures_of(records: Sequence[Record]) -> list[str]:
    measures = [name for name, (selects, _) in OUTCOMES.items() if any(selects(r) for r in records)]
    return [m for m in measures if m != "over_refusal"] if "accuracy" in measures else measures


def columns_of(records: Sequence[Record]) -> list[Column]:
    """A column per dataset and measure, in the order the datasets first appear; a pool after its last set."""
    datasets = list(dict.fromkeys(r.dataset for r in records))
    pooled = {pool: [d for d in datasets if d.startswith(prefix)] for pool, prefix in POOLS.items()}
    columns: list[Column] = []
    for dataset in datasets:
        own = [r for r in records if r.dataset == dataset]
        columns += [Column(dataset, measure, (dataset,)) for measure in _measures_of(own)]
        for pool, members in pooled.items():
            if len(members) >= 2 and dataset == members[-1]:
                chosen = [r for r in records if r.dataset in members]
                columns += [Column(pool, measure, tuple(members)) for measure in _measures_of(chosen)]
    return columns


def _rate(records: Sequence[Record], measure: str) -> Rate | None:
    selects, outcome_of = OUTCOMES[measure]
    outcomes = [outcome_of(r) for r in records if r.ok and selects(r)]
    known = [o for o in outcomes if o is not None]
    return Rate(sum(known), len(known)) if known else None


def _wall_ratio(plan: Sequence[Record], baseline: Sequence[Record]) -> float | None:
    def latencies(records: Sequence[Record]) -> dict[tuple[str, str], float]:
        return {(r.dataset, r.item_id): r.latency_s for r in records if r.ok and r.latency_s is not None}

    own, base = latencies(plan), latencies(baseline)
    common = own.keys() & base.keys()
    base_total = sum(base[key] for key in common)
    return sum(own[key] for key in common) / base_total if common and base_total > 0 else None


def build_table(records: Sequence[Record], baseline: str) -> Table:
    records = latest(records)
    plans = tuple(dict.fromkeys(r.plan for r in records))
    if baseline not in plans:
        raise TableError(f"no record for the baseline plan {baseline!r}; plans: {', '.join(plans) or 'none'}")
    plans = (baseline, *(p for p in plans if p != baseline))
    columns = tuple(columns_of(records))
    by_plan = {plan: [r for r in records if r.plan == plan] for plan in plans}
    cells: dict[str, dict[str, Cell]] = {plan: {} for plan in plans}
    for column in columns:
        in_column = [r for r in records if r.dataset in column.datasets]
        for plan in plans:
            rate = _rate([r for r in in_column if r.plan == plan], column.measure)
            if rate is None:
                continue
            if plan == baseline:
                cells[plan][column.title] = Cell(rate)
                continue
            try:
                comparison = compare(in_column, [baseline], [plan], column.measure)
            except CompareError:  # no item answered by both: the rate stands alone
                cells[plan][column.title] = Cell(rate)
                continue
            cells[plan][column.title] = Cell(rate, comparison.difference, comparison.ci95)
    costs = {}
    for plan, own in by_plan.items():
        spent = cost(own)
        costs[plan] = PlanCost(
            wall_vs_baseline=_wall_ratio(own, by_plan[baseline]),
            backend_calls=spent["backend_calls_mean"],
            rounds_used=spent["rounds_used_mean"],
            hidden_tokens=spent["hidden_tokens_mean"],
        )
    return Table(baseline, plans, columns, cells, costs)


def _cell(cell: Cell | None) -> str:
    if cell is None:
        return "–"
    if cell.difference is None or cell.ci95 is None:
        return format_rate(cell.rate.as_dict())
    low, high = cell.ci95
    return f"{format_rate(cell.rate.as_dict())}; {points(cell.difference)} ({points(low)} to {points(high)})"


def _number(value: float | None, digits: int, suffix: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def render_markdown(table: Table) -> str:
    header = [
        "plan",
        *(c.title for c in table.columns),
        "wall time",
        "backend calls",
        "rounds used",
        "hidden tok",
    ]
    lines = [
        f"Rates: percent (k/n; Wilson 95%); after `;` the difference from `{table.baseline}` in points on "
        "the items both answered, with its paired 95% interval. Cost over every set: summed wall time "
        f"against `{table.baseline}`'s on the same items, then means per request.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for plan in table.plans:
        spent = table.cost[plan]
        cells = [
            plan,
            *(_cell(table.cells[plan].get(column.title)) for column in table.columns),
            _number(spent.wall_vs_baseline, 2, "×"),
            _number(spent.backend_calls, 2),
            _number(spent.rounds_used, 2),
            _number(spent.hidden_tokens, 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_json(table: Table) -> str:
    return json.dumps(table.as_dict(), indent=2) + "\n"
