"""From the measurements of one run to the tables, the verdicts against issue #20's bars and the JSON record.

Every figure is a median over repetitions. Figures relative to another target (added latency against the
direct upstream, throughput against the floor) are taken within each repetition, where the targets ran
back to back, and their median is reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

DIRECT = "direct"
FLOOR = "floor"
TWICE = "twice"
LITELLM = "litellm"
LABELS = {
    DIRECT: "direct (mock upstream)",
    FLOOR: "floor (FastAPI + aiohttp)",
    TWICE: "twice (pass-through)",
    LITELLM: "LiteLLM proxy",
}

# Issue #20's bars, against the floor measured in the same run.
MIN_JSON_RATIO = 0.90
MIN_STREAM_RATIO = 0.95
MAX_EXTRA_ADDED_P50_MS = 0.05
MAX_EXTRA_ADDED_TTFT_MS = 0.2
MAX_IDLE_RSS_MB = 120.0

STRATEGY_CONCURRENCY = 4


@dataclass(frozen=True, slots=True)
class Scenario:
    upstream: str  # "instant", "50 ms", "20 ms/event"
    kind: str  # "json", "stream", "ttft"
    concurrency: int
    model: str

    @property
    def key(self) -> str:
        return f"{self.upstream} {self.kind} c={self.concurrency}"


@dataclass(frozen=True, slots=True)
class Measurement:
    target: str
    scenario: str  # Scenario.key
    repetition: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float | None = None
    ttft_p50_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    target: str
    repetitions: int
    p50_ms: float
    p99_ms: float
    added_p50_ms: float | None
    rps: float
    vs_floor: float | None
    cpu_ms_per_request: float | None
    ttft_p50_ms: float | None
    added_ttft_ms: float | None
    errors: int


@dataclass(frozen=True, slots=True)
class StrategyRow:
    """twice with one plan in front of the vLLM stand-in: the gateway's own CPU beside the stand-in's."""

    plan: str
    repetitions: int
    gateway_cpu_ms_per_request: float
    stub_cpu_ms_per_request: float
    rps: float
    errors: int


@dataclass(frozen=True, slots=True)
class Verdict:
    name: str
    measured: str
    bar: str
    met: bool


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def _paired(
    measurements: Sequence[Measurement],
    scenario: str,
    target: str,
    other: str,
    value: Callable[[Measurement, Measurement], float | None],
) -> float | None:
    """The median over repetitions of `value(target's, other's)`, each pair from one repetition."""
    mine = {m.repetition: m for m in measurements if m.scenario == scenario and m.target == target}
    theirs = {m.repetition: m for m in measurements if m.scenario == scenario and m.target == other}
    return _median([value(mine[r], theirs[r]) for r in mine if r in theirs])


def _ttft_added(mine: Measurement, direct: Measurement) -> float | None:
    if mine.ttft_p50_ms is None or direct.ttft_p50_ms is None:
        return None
    return mine.ttft_p50_ms - direct.ttft_p50_ms


def rows(
    measurements: Sequence[Measurement], scenarios: Sequence[Scenario], targets: Sequence[str]
) -> list[Row]:
    out: list[Row] = []
    for scenario in scenarios:
        for target in targets:
            mine = [m for m in measurements if m.scenario == scenario.key and m.target == target]
            if not mine:
                continue
            relative = target != DIRECT
            out.append(
                Row(
                    scenario=scenario.key,
                    target=target,
                    repetitions=len(mine),
                    p50_ms=_median([m.p50_ms for m in mine]) or math.nan,
                    p99_ms=_median([m.p99_ms for m in mine]) or math.nan,
                    added_p50_ms=_paired(
                        measurements, scenario.key, target, DIRECT, lambda a, b: a.p50_ms - b.p50_ms
                    )
                    if relative
                    else None,
                    rps=_median([m.rps for m in mine]) or math.nan,
                    vs_floor=_paired(
                        measurements,
                        scenario.key,
                        target,
                        FLOOR,
                        lambda a, b: a.rps / b.rps if b.rps > 0 else None,
                    )
                    if target != FLOOR
                    else None,
                    cpu_ms_per_request=_median([m.cpu_ms_per_request for m in mine]),
                    ttft_p50_ms=_median([m.ttft_p50_ms for m in mine]),
                    added_ttft_ms=_paired(measurements, scenario.key, target, DIRECT, _ttft_added)
                    if relative
                    else None,
                    errors=sum(m.errors for m in mine),
                )
            )
    return out


def _find(table: Sequence[Row], scenario: str, target: str) -> Row | None:
    return next((r for r in table if r.scenario == scenario and r.target == target), None)


def verdicts(table: Sequence[Row], idle_rss_mb: float | None) -> list[Verdict]:
    """Issue #20's bars for twice against the floor of the same run."""
    out: list[Verdict] = []
    for scenario, bar in (("instant json c=32", MIN_JSON_RATIO), ("instant stream c=32", MIN_STREAM_RATIO)):
        row = _find(table, scenario, TWICE)
        if row is not None and row.vs_floor is not None:
            out.append(
                Verdict(
                    f"requests/s, {scenario}",
                    f"{row.vs_floor:.0%} of the floor",
                    f">= {bar:.0%}",
                    row.vs_floor >= bar,
                )
            )
    for scenario, attribute, limit in (
        ("instant json c=1", "added_p50_ms", MAX_EXTRA_ADDED_P50_MS),
        ("20 ms/event ttft c=1", "added_ttft_ms", MAX_EXTRA_ADDED_TTFT_MS),
    ):
        mine, floor = _find(table, scenario, TWICE), _find(table, scenario, FLOOR)
        if mine is None or floor is None:
            continue
        ours, theirs = getattr(mine, attribute), getattr(floor, attribute)
        if ours is None or theirs is None:
            continue
        what = "added p50" if attribute == "added_p50_ms" else "added TTFT"
        out.append(
            Verdict(
                f"{what}, {scenario}",
                f"{ours:+.3f} ms vs the floor's {theirs:+.3f} ms ({ours - theirs:+.3f})",
                f"<= floor + {limit:g} ms",
                ours - theirs <= limit,
            )
        )
    if idle_rss_mb is not None:
        out.append(
            Verdict(
                "resident memory, one idle worker",
                f"{idle_rss_mb:.0f} MB",
                f"<= {MAX_IDLE_RSS_MB:.0f} MB",
                idle_rss_mb <= MAX_IDLE_RSS_MB,
            )
        )
    return out


def _num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:,.{digits}f}"


def markdown_table(table: Sequence[Row]) -> str:
    columns = (
        "scenario",
        "target",
        "p50 / p99 ms",
        "added p50 ms",
        "req/s",
        "vs floor",
        "CPU ms/req",
        "TTFT p50 ms",
        "added TTFT ms",
        "errors",
    )
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in table:
        cells = [
            r.scenario,
            LABELS.get(r.target, r.target),
            f"{_num(r.p50_ms, 3)} / {_num(r.p99_ms, 2)}",
            _num(r.added_p50_ms, 3, signed=True),
            _num(r.rps, 0),
            "–" if r.vs_floor is None else f"{r.vs_floor:.0%}",
            _num(r.cpu_ms_per_request, 3),
            _num(r.ttft_p50_ms, 2),
            _num(r.added_ttft_ms, 2, signed=True),
            str(r.errors),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_processes(processes: dict[str, dict[str, float]]) -> str:
    lines = [
        "| target | processes | startup s | idle RSS MB | RSS after the load MB |",
        "|---|---|---|---|---|",
    ]
    for target, p in processes.items():
        lines.append(
            f"| {LABELS.get(target, target)} | {p['processes']:.0f} | {p['startup_s']:.1f} | "
            f"{p['idle_rss_mb']:.0f} | {p.get('final_rss_mb', math.nan):.0f} |"
        )
    return "\n".join(lines)


def markdown_verdicts(checks: Sequence[Verdict]) -> str:
    lines = ["| bar (issue #20) | measured | goal | verdict |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.measured} | {c.bar} | {'met' if c.met else 'NOT MET'} |" for c in checks]
    return "\n".join(lines)


def markdown_strategies(table: Sequence[StrategyRow]) -> str:
    lines = [
        f"Strategies on (twice in front of the vLLM stand-in, JSON, c={STRATEGY_CONCURRENCY}):",
        "",
        "| plan | gateway CPU ms/req (the path's own) | stand-in CPU ms/req (the model's side) | req/s "
        "| errors |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.plan} | {r.gateway_cpu_ms_per_request:.2f} | {r.stub_cpu_ms_per_request:.2f} | {r.rps:,.0f} | "
        f"{r.errors} |"
        for r in table
    ]
    return "\n".join(lines)


def json_record(
    meta: dict[str, Any],
    table: Sequence[Row],
    checks: Sequence[Verdict],
    processes: dict[str, dict[str, float]],
    measurements: Sequence[Measurement],
    strategies: Sequence[StrategyRow] = (),
) -> dict[str, Any]:
    return {
        "meta": meta,
        "rows": [asdict(r) for r in table],
        "verdicts": [asdict(c) for c in checks],
        "processes": processes,
        "strategies": [asdict(r) for r in strategies],
        "raw": [asdict(m) for m in measurements],
    }
