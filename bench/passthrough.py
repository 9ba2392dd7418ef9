"""Pass-through benchmark: what the gateway adds in front of a fast loopback upstream, measured in one run.

The upstream is the vLLM stand-in (`tests/support/vllm_stub.py`) in its own process, once answering at
once ("instant", to compare gateways) and once after a realistic per-response latency (50 ms, what a user
feels). For each upstream and gateway worker count, every scenario (JSON and streaming, concurrency 1 and
32) is measured directly against the upstream and through `twice serve --backend vllm`, back to back, in
alternating order, for several repetitions; the table reports medians. Only this run's numbers are printed.

    python bench/passthrough.py [--quick] [--requests N] [--workers 1,2] [--out FILE.md|FILE.json]

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (`make bench`): make the repository root importable, as `python -m` would.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import datetime
import os
import platform
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import orjson

from bench.loadgen import Measurement, chat_body, measure
from bench.processes import Server, cpu_list, pin_self, running_gateway, running_stub
from bench.report import (
    Scenario,
    ScenarioRuns,
    check_targets,
    json_record,
    markdown_table,
    markdown_targets,
    recommend_workers,
    summarize,
)

MODEL = "stub-model"  # the stub's model id
INSTANT = "instant"
CONCURRENCIES = (1, 32)


@dataclass(frozen=True, slots=True)
class Plan:
    requests: int
    repeats: int
    workers: tuple[int, ...]
    latency_ms: float
    max_tokens: int
    pin: bool

    @property
    def realistic(self) -> str:
        return f"{self.latency_ms:g} ms"

    def requests_for(self, upstream: str, concurrency: int) -> int:
        # One client on the realistic upstream waits the full latency per request: fewer keep it bounded.
        if upstream != INSTANT and concurrency == 1:
            return max(20, self.requests // 20)
        return self.requests

    def warmup_for(self, upstream: str, concurrency: int) -> int:
        return max(2 * concurrency, self.requests_for(upstream, concurrency) // 10)


@dataclass(frozen=True, slots=True)
class Placement:
    """Which CPUs each process runs on (None: wherever the scheduler puts it)."""

    client_and_upstream: list[int] | None
    gateway_by_workers: dict[int, list[int] | None]

    @classmethod
    def choose(cls, workers: Sequence[int], pin: bool) -> Placement:
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2:
            return cls(None, dict.fromkeys(workers))
        # The load generator and the upstream share the last core; the gateway gets the others to itself
        # when it has at most one worker per remaining core, else every core (shared with them).
        spare = cpus[:-1]
        return cls([cpus[-1]], {w: spare[:w] if w <= len(spare) else cpus for w in workers})

    def describe(self) -> str:
        if self.client_and_upstream is None:
            return "not pinned"
        parts = [f"load generator and upstream on CPU {cpu_list(self.client_and_upstream)}"]
        for workers, cpus in self.gateway_by_workers.items():
            where = "unpinned" if cpus is None else f"CPU {cpu_list(cpus)}"
            parts.append(f"gateway workers={workers} on {where}")
        return "; ".join(parts)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _new_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency off Windows
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def _measure_pair(
    runner: asyncio.Runner,
    plan: Plan,
    scenario: Scenario,
    direct: Server,
    gateway: Server,
    gateway_first: bool,
) -> tuple[Measurement, Measurement]:
    body = chat_body(MODEL, stream=scenario.stream, max_tokens=plan.max_tokens)
    requests = plan.requests_for(scenario.upstream, scenario.concurrency)
    warmup = plan.warmup_for(scenario.upstream, scenario.concurrency)
    results: dict[str, Measurement] = {}
    for side in ("gateway", "direct") if gateway_first else ("direct", "gateway"):
        server = gateway if side == "gateway" else direct
        results[side] = runner.run(
            measure(
                server.url + "/v1/chat/completions",
                body,
                stream=scenario.stream,
                concurrency=scenario.concurrency,
                requests=requests,
                warmup=warmup,
                cpu_probe=server.cpu_seconds,
            )
        )
    return results["direct"], results["gateway"]


def _run_setup(
    runner: asyncio.Runner, plan: Plan, placement: Placement, upstream: str, workers: int, started: float
) -> list[ScenarioRuns]:
    """Every scenario, every repetition, against one upstream and one gateway in front of it."""
    latency_s = 0.0 if upstream == INSTANT else plan.latency_ms / 1000
    runs = [
        ScenarioRuns(Scenario(upstream, workers, stream, concurrency))
        for concurrency in CONCURRENCIES
        for stream in (False, True)
    ]
    with ExitStack() as stack:
        direct = stack.enter_context(running_stub(latency_s=latency_s, cpus=placement.client_and_upstream))
        gateway_cpus = placement.gateway_by_workers[workers]
        gateway = stack.enter_context(running_gateway(direct.url, workers=workers, cpus=gateway_cpus))
        for repetition in range(plan.repeats):
            for scenario_runs in runs:
                s = scenario_runs.scenario
                _log(
                    f"{time.monotonic() - started:4.0f} s  [{upstream} upstream, workers={workers}] "
                    f"{s.kind} c={s.concurrency}, repetition {repetition + 1}/{plan.repeats}"
                )
                # Alternate which side goes first, so a drift in the machine's load favours neither.
                gateway_first = repetition % 2 == 1
                scenario_runs.pairs.append(_measure_pair(runner, plan, s, direct, gateway, gateway_first))
    return runs


def run_benchmark(plan: Plan, placement: Placement, started: float) -> list[ScenarioRuns]:
    pin_self(placement.client_and_upstream)
    all_runs: list[ScenarioRuns] = []
    with _new_runner() as runner:
        for upstream in (INSTANT, plan.realistic):
            for workers in plan.workers:
                all_runs += _run_setup(runner, plan, placement, upstream, workers, started)
    return all_runs


def _load_average() -> float:
    """The 1-minute load average: how busy the machine was with other work too (it is shared)."""
    return round(os.getloadavg()[0], 2)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gateway pass-through overhead against the upstream.")
    parser.add_argument("--quick", action="store_true", help="Smoke run: 200 requests, 1 repetition.")
    parser.add_argument("--requests", type=int, help="Timed requests per measurement (default 1000).")
    parser.add_argument("--repeats", type=int, help="Repetitions, medians reported (default 3).")
    parser.add_argument("--workers", default="1,2", help="Gateway worker counts to measure (default 1,2).")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="Realistic upstream latency.")
    parser.add_argument("--max-tokens", type=int, default=16, help="Tokens per answer (stream events).")
    parser.add_argument("--no-pin", action="store_true", help="Do not pin processes to CPUs.")
    parser.add_argument("--out", type=Path, help="Also write the results: .json for JSON, else Markdown.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    plan = Plan(
        requests=args.requests or (200 if args.quick else 1000),
        repeats=args.repeats or (1 if args.quick else 3),
        workers=tuple(int(w) for w in args.workers.split(",")),
        latency_ms=args.latency_ms,
        max_tokens=args.max_tokens,
        pin=not args.no_pin,
    )
    placement = Placement.choose(plan.workers, plan.pin)
    started = time.monotonic()
    meta: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/passthrough.py", *(argv or sys.argv[1:])]),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average_at_start": _load_average(),
        "python": platform.python_version(),
        "placement": placement.describe(),
        "requests": plan.requests,
        "repeats": plan.repeats,
        "max_tokens": plan.max_tokens,
    }
    _log(f"placement: {meta['placement']}")
    runs = run_benchmark(plan, placement, started)
    meta["duration_s"] = round(time.monotonic() - started, 1)
    meta["load_average_at_end"] = _load_average()

    rows = [summarize(r) for r in runs]
    workers = recommend_workers(rows, plan.realistic)
    checks = check_targets(rows, workers, (INSTANT, plan.realistic))
    header = (
        f"Pass-through benchmark, {meta['date']}: {meta['cpus']} CPUs ({meta['cpu_model']}), "
        f"{meta['placement']}; {plan.requests} requests per measurement, medians of {plan.repeats}; "
        f"{meta['duration_s']} s; load average (1 min) {meta['load_average_at_start']} at start, "
        f"{meta['load_average_at_end']} at end."
    )
    text = "\n\n".join([header, markdown_table(rows), markdown_targets(checks, workers)])
    print(text)
    if args.out:
        if args.out.suffix == ".json":
            record = json_record(meta, rows, runs, workers, checks)
            args.out.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
        else:
            args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
