"""From paired direct/gateway measurements to the table, the target verdicts and the JSON record.

Every figure is a median over repetitions. "Added" figures and the throughput ratio are taken per repetition
(the direct and gateway runs of one repetition ran back to back) and their median is reported.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.loadgen import Measurement

MAX_ADDED_P50_MS = 2.0
MIN_THROUGHPUT_RATIO = 0.80
SAME_THROUGHPUT = 0.02


@dataclass(frozen=True, slots=True)
class Scenario:
    upstream: str  # "instant" or "50 ms"
    workers: int
    stream: bool
    concurrency: int

    @property
    def kind(self) -> str:
        return "stream" if self.stream else "json"


@dataclass
class ScenarioRuns:
    scenario: Scenario
    pairs: list[tuple[Measurement, Measurement]] = field(default_factory=list)  # (direct, gateway)


@dataclass(frozen=True, slots=True)
class Row:
    upstream: str
    workers: int
    kind: str
    concurrency: int
    repetitions: int
    direct_p50_ms: float
    direct_p99_ms: float
    gateway_p50_ms: float
    gateway_p99_ms: float
    added_p50_ms: float
    direct_rps: float
    gateway_rps: float
    throughput_ratio: float
    direct_ttft_p50_ms: float | None
    gateway_ttft_p50_ms: float | None
    added_ttft_p50_ms: float | None
    upstream_cpu_ms_per_request: float | None
    gateway_cpu_ms_per_request: float | None
    errors: int


def _median_of(pairs: Sequence[tuple[Measurement, Measurement]], value: Callable[..., float]) -> float:
    return statistics.median(value(direct, gateway) for direct, gateway in pairs)


def _median_cpu(measurements: Sequence[Measurement]) -> float | None:
    values = [m.cpu_ms_per_request for m in measurements if m.cpu_ms_per_request is not None]
    return statistics.median(values) if values else None


def summarize(runs: ScenarioRuns) -> Row:
    s, pairs = runs.scenario, runs.pairs
    ttft = s.stream
    return Row(
        upstream=s.upstream,
        workers=s.workers,
        kind=s.kind,
        concurrency=s.concurrency,
        repetitions=len(pairs),
        direct_p50_ms=_median_of(pairs, lambda d, g: d.latency_ms(50)),
        direct_p99_ms=_median_of(pairs, lambda d, g: d.latency_ms(99)),
        gateway_p50_ms=_median_of(pairs, lambda d, g: g.latency_ms(50)),
        gateway_p99_ms=_median_of(pairs, lambda d, g: g.latency_ms(99)),
        added_p50_ms=_median_of(pairs, lambda d, g: g.latency_ms(50) - d.latency_ms(50)),
        direct_rps=_median_of(pairs, lambda d, g: d.requests_per_s),
        gateway_rps=_median_of(pairs, lambda d, g: g.requests_per_s),
        throughput_ratio=_median_of(pairs, lambda d, g: g.requests_per_s / d.requests_per_s),
        direct_ttft_p50_ms=_median_of(pairs, lambda d, g: d.ttft_ms(50)) if ttft else None,
        gateway_ttft_p50_ms=_median_of(pairs, lambda d, g: g.ttft_ms(50)) if ttft else None,
        added_ttft_p50_ms=_median_of(pairs, lambda d, g: g.ttft_ms(50) - d.ttft_ms(50)) if ttft else None,
        upstream_cpu_ms_per_request=_median_cpu([d for d, _ in pairs]),
        gateway_cpu_ms_per_request=_median_cpu([g for _, g in pairs]),
        errors=sum(d.errors + g.errors for d, g in pairs),
    )


@dataclass(frozen=True, slots=True)
class TargetCheck:
    name: str
    measured: str
    target: str
    met: bool


def _find(rows: Sequence[Row], upstream: str, workers: int, kind: str, concurrency: int) -> Row | None:
    for row in rows:
        if (row.upstream, row.workers, row.kind, row.concurrency) == (upstream, workers, kind, concurrency):
            return row
    return None


def recommend_workers(rows: Sequence[Row], realistic: str) -> int:
    """The worker count with the most gateway req/s at c=32 on the realistic upstream (JSON); a count
    within 2% of the best counts as equal, and fewer workers win (each one is a process and a pool)."""
    candidates = [r for r in rows if r.upstream == realistic and r.kind == "json" and r.concurrency == 32]
    if not candidates:
        candidates = [r for r in rows if r.kind == "json" and r.concurrency == 32]
    if not candidates:
        return min(r.workers for r in rows)
    best = max(r.gateway_rps for r in candidates)
    return min(r.workers for r in candidates if r.gateway_rps >= best * (1 - SAME_THROUGHPUT))


def check_targets(rows: Sequence[Row], workers: int, upstreams: Sequence[str]) -> list[TargetCheck]:
    checks: list[TargetCheck] = []
    for upstream in upstreams:
        row = _find(rows, upstream, workers, "json", 1)
        if row is not None:
            checks.append(
                TargetCheck(
                    name=f"added latency p50, c=1, {upstream} upstream, workers={workers}",
                    measured=f"{row.added_p50_ms:+.2f} ms",
                    target=f"<= {MAX_ADDED_P50_MS:.0f} ms",
                    met=row.added_p50_ms <= MAX_ADDED_P50_MS,
                )
            )
    for upstream in upstreams:
        for kind in ("json", "stream"):
            row = _find(rows, upstream, workers, kind, 32)
            if row is not None:
                checks.append(
                    TargetCheck(
                        name=f"throughput {kind}, c=32, {upstream} upstream, workers={workers}",
                        measured=f"{row.throughput_ratio:.0%} of direct",
                        target=f">= {MIN_THROUGHPUT_RATIO:.0%}",
                        met=row.throughput_ratio >= MIN_THROUGHPUT_RATIO,
                    )
                )
    return checks


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _added(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


_COLUMNS = (
    "upstream",
    "workers",
    "kind",
    "c",
    "direct p50 / p99 ms",
    "gateway p50 / p99 ms",
    "added p50 ms",
    "direct req/s",
    "gateway req/s",
    "gateway/direct",
    "TTFT p50 direct / gateway ms",
    "added TTFT ms",
    "gateway CPU ms/req",
    "errors",
)


def _cells(row: Row) -> list[str]:
    ttft = (
        "–"
        if row.direct_ttft_p50_ms is None
        else f"{_ms(row.direct_ttft_p50_ms)} / {_ms(row.gateway_ttft_p50_ms)}"
    )
    return [
        row.upstream,
        str(row.workers),
        row.kind,
        str(row.concurrency),
        f"{row.direct_p50_ms:.2f} / {row.direct_p99_ms:.2f}",
        f"{row.gateway_p50_ms:.2f} / {row.gateway_p99_ms:.2f}",
        _added(row.added_p50_ms),
        f"{row.direct_rps:,.0f}",
        f"{row.gateway_rps:,.0f}",
        f"{row.throughput_ratio:.0%}",
        ttft,
        _added(row.added_ttft_p50_ms),
        _ms(row.gateway_cpu_ms_per_request),
        str(row.errors),
    ]


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def markdown_targets(checks: Sequence[TargetCheck], workers: int) -> str:
    lines = [f"Recommended workers on this machine: {workers}.", ""]
    lines += ["| target | measured | goal | verdict |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.measured} | {c.target} | {'met' if c.met else 'NOT MET'} |" for c in checks]
    return "\n".join(lines)


def json_record(
    meta: dict[str, Any],
    rows: Sequence[Row],
    runs: Sequence[ScenarioRuns],
    workers: int,
    checks: Sequence[TargetCheck],
) -> dict[str, Any]:
    raw = [
        {
            **asdict(r.scenario),
            "repetitions": [
                {
                    side: {
                        "p50_ms": m.latency_ms(50),
                        "p99_ms": m.latency_ms(99),
                        "requests_per_s": m.requests_per_s,
                        "ttft_p50_ms": m.ttft_ms(50) if m.ttfts_s else None,
                        "cpu_ms_per_request": m.cpu_ms_per_request,
                        "errors": m.errors,
                        "requests": m.requests,
                        "wall_s": m.wall_s,
                    }
                    for side, m in (("direct", direct), ("gateway", gateway))
                }
                for direct, gateway in r.pairs
            ],
        }
        for r in runs
    ]
    return {
        "meta": meta,
        "rows": [asdict(row) for row in rows],
        "recommended_workers": workers,
        "targets": [asdict(c) for c in checks],
        "raw": raw,
    }
