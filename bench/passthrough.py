"""Pass-through benchmark: what twice adds in front of a fast upstream, beside the floor and the upstream.

One run measures, side by side: the upstream directly, the floor (a minimal FastAPI + aiohttp proxy,
`bench/floor_proxy.py`), twice (`python -m app serve --backend vllm`, no strategy: the pass-through) and,
when `--litellm-venv` holds LiteLLM's proxy, LiteLLM. Each gateway is one worker pinned to the first CPU; the
upstream (`bench/mock_upstream.py`, raw asyncio), wrk and this script share the last. Every scenario is
measured for every target back to back, the targets' order rotating between repetitions; medians reported.

Scenarios: an instant upstream and one that answers after 50 ms, JSON at concurrency 1 (latency) and 32
(throughput), streams at 32; and the time to first token at concurrency 1 with 20 ms between events. For
each gateway: the CPU time it used per request (from /proc), resident memory idle and after the load.

Strategies on: twice in front of the vLLM stand-in (`bench/stub_server.py`, which answers logprobs and
continuations as the strategies need), one plan at a time (`X-Twice-Strategy`), JSON at concurrency 4: the
gateway's own CPU per request beside the stand-in's (the model's side, excluded).

    python bench/passthrough.py [--quick] [--duration S] [--repeats N] [--targets direct,floor,twice]
                                [--litellm-venv DIR] [--strategies none,psr,...] [--out FILE.md|FILE.json]

Needs wrk (`apt-get install wrk`). Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (`make bench`): make the repository root importable, as `python -m` would.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import orjson

from bench.processes import Server, cpu_list, free_port, pin_self, running
from bench.report import (
    DIRECT,
    FLOOR,
    LITELLM,
    STRATEGY_CONCURRENCY,
    TWICE,
    Measurement,
    Scenario,
    StrategyRow,
    json_record,
    markdown_processes,
    markdown_strategies,
    markdown_table,
    markdown_verdicts,
    rows,
    verdicts,
)
from bench.wrk import have_wrk, run_wrk, time_to_first_token

BENCH = Path(__file__).resolve().parent
LITELLM_KEY = "sk-bench-loopback-only-0000000000000000"  # a throwaway master key, loopback only
AUTH = "bench-token"
IDLE_SETTLE_S = 2.0

SCENARIOS = (
    Scenario("instant", "json", 1, "mock-model"),
    Scenario("instant", "json", 32, "mock-model"),
    Scenario("instant", "stream", 32, "mock-model"),
    Scenario("50 ms", "json", 1, "mock-model-d50"),
    Scenario("50 ms", "json", 32, "mock-model-d50"),
    Scenario("50 ms", "stream", 32, "mock-model-d50"),
    Scenario("20 ms/event", "ttft", 1, "mock-model-cd20"),
)


@dataclass(frozen=True, slots=True)
class Placement:
    gateway: list[int] | None
    load: list[int] | None  # the upstream, wrk and this script

    @classmethod
    def choose(cls, pin: bool) -> Placement:
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2:
            return cls(None, None)
        return cls([cpus[0]], [cpus[-1]])

    def describe(self) -> str:
        if self.gateway is None or self.load is None:
            return "not pinned"
        return (
            f"each gateway one worker on CPU {cpu_list(self.gateway)}; "
            f"upstream, wrk and the TTFT client on CPU {cpu_list(self.load)}"
        )


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _mock(placement: Placement) -> Iterator[Server]:
    port = free_port()
    with running(
        "mock",
        [sys.executable, str(BENCH / "mock_upstream.py")],
        url=f"http://127.0.0.1:{port}",
        health="/health",
        cpus=placement.load,
        env={"MOCK_PORT": str(port)},
    ) as (server, _):
        yield server


@contextmanager
def _gateway(
    target: str, upstream: str, placement: Placement, litellm_venv: Path | None
) -> Iterator[tuple[Server, float]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    uvicorn = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    uvicorn += ["--no-access-log", "--log-level", "warning"]
    if target == FLOOR:
        command, health, env = [*uvicorn, "bench.floor_proxy:app"], "/v1/models", {"UPSTREAM": upstream}
    elif target == TWICE:
        command = [sys.executable, "-m", "app", "serve", "--backend", "vllm", "--upstream", upstream]
        command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        health, env = "/ready", {"TWICE_SERVER__LOG_LEVEL": "warning", "TWICE_AUTH__API_KEYS": ""}
    elif target == LITELLM and litellm_venv is not None:
        with tempfile.NamedTemporaryFile(
            "w", suffix=".yaml", prefix="bench-litellm-", delete=False
        ) as config:
            config.write("model_list:\n")
            for model in sorted({s.model for s in SCENARIOS}):
                config.write(
                    f"  - model_name: {model}\n    litellm_params:\n      model: openai/{model}\n"
                    f"      api_base: {upstream}/v1\n      api_key: mock-key\n"
                )
            config.write("litellm_settings:\n  set_verbose: false\n  request_timeout: 600\n")
        command = [str(litellm_venv / "bin" / "litellm"), "--config", config.name, "--host", "127.0.0.1"]
        command += ["--port", str(port), "--num_workers", "1"]
        health = "/health/liveliness"
        env = {
            "LITELLM_MASTER_KEY": LITELLM_KEY,
            "LITELLM_LOG": "WARNING",
            "LITELLM_TELEMETRY_DISABLED": "true",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            # As the shared harness runs it: no telemetry, no hub look-ups.
            "DO_NOT_TRACK": "1",
            "OTEL_SDK_DISABLED": "true",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
        }
    else:
        raise ValueError(f"unknown target {target!r}")
    try:
        with running(
            target, command, url=url, health=health, cpus=placement.gateway, env=env, timeout_s=300
        ) as up:
            yield up
    finally:
        if target == LITELLM:
            Path(config.name).unlink(missing_ok=True)


def _measure(
    server: Server,
    target: str,
    scenario: Scenario,
    repetition: int,
    duration_s: float,
    ttft_requests: int,
    placement: Placement,
) -> Measurement:
    auth = LITELLM_KEY if target == LITELLM else AUTH
    probe = target != DIRECT
    cpu_before = server.cpu_seconds() if probe else 0.0
    if scenario.kind == "ttft":
        ttft = time_to_first_token(server.url, model=scenario.model, auth=auth, requests=ttft_requests)
        cpu = server.cpu_seconds() - cpu_before if probe else None
        return Measurement(
            target,
            scenario.key,
            repetition,
            ttft.requests,
            ttft.errors,
            0.0,
            ttft.total_p50_ms,
            ttft.total_p50_ms,
            cpu_ms_per_request=cpu * 1000 / ttft.requests if cpu is not None and ttft.requests else None,
            ttft_p50_ms=ttft.ttft_p50_ms,
        )
    result = run_wrk(
        server.url,
        connections=scenario.concurrency,
        duration_s=duration_s,
        stream=scenario.kind == "stream",
        model=scenario.model,
        auth=auth,
        cpus=placement.load,
    )
    cpu = server.cpu_seconds() - cpu_before if probe else None
    done = result.requests - result.errors
    return Measurement(
        target,
        scenario.key,
        repetition,
        result.requests,
        result.errors,
        result.rps,
        result.p50_ms,
        result.p99_ms,
        cpu_ms_per_request=cpu * 1000 / done if cpu is not None and done > 0 else None,
    )


def _warm_up(server: Server, target: str, placement: Placement) -> None:
    auth = LITELLM_KEY if target == LITELLM else AUTH
    for stream in (False, True):
        run_wrk(
            server.url,
            connections=8,
            duration_s=1,
            stream=stream,
            model="mock-model",
            auth=auth,
            cpus=placement.load,
        )


def run_benchmark(
    targets: Sequence[str],
    duration_s: float,
    repeats: int,
    ttft_requests: int,
    placement: Placement,
    litellm_venv: Path | None,
    started: float,
) -> tuple[list[Measurement], dict[str, dict[str, float]]]:
    pin_self(placement.load)
    measurements: list[Measurement] = []
    processes: dict[str, dict[str, float]] = {}
    with ExitStack() as stack:
        mock = stack.enter_context(_mock(placement))
        servers: dict[str, Server] = {DIRECT: mock}
        for target in targets:
            if target == DIRECT:
                continue
            _log(f"{time.monotonic() - started:5.0f} s  starting {target}")
            server, startup_s = stack.enter_context(_gateway(target, mock.url, placement, litellm_venv))
            time.sleep(IDLE_SETTLE_S)
            processes[target] = {
                "processes": server.processes(),
                "startup_s": round(startup_s, 2),
                "idle_rss_mb": round(server.rss_mb(), 1),
            }
            _warm_up(server, target, placement)
            servers[target] = server
        for repetition in range(repeats):
            shift = repetition % len(targets)
            order = [*targets[shift:], *targets[:shift]]  # a drift in the machine's load favours no one
            for scenario in SCENARIOS:
                _log(
                    f"{time.monotonic() - started:5.0f} s  "
                    f"repetition {repetition + 1}/{repeats}: {scenario.key}"
                )
                for target in order:
                    measurements.append(
                        _measure(
                            servers[target],
                            target,
                            scenario,
                            repetition,
                            duration_s,
                            ttft_requests,
                            placement,
                        )
                    )
        for target, server in servers.items():
            if target in processes:
                processes[target]["final_rss_mb"] = round(server.rss_mb(), 1)
    return measurements, processes


STUB_MODEL = "stub-model"


def run_strategies(
    plans: Sequence[str], duration_s: float, repeats: int, placement: Placement, started: float
) -> list[StrategyRow]:
    """twice with each plan in front of the vLLM stand-in: CPU per request of the gateway and of the stub."""
    port = free_port()
    stub_command = [sys.executable, "-m", "bench.stub_server", f"--port={port}"]
    results: dict[str, list[tuple[float, float, float, int]]] = {plan: [] for plan in plans}
    with ExitStack() as stack:
        stub, _ = stack.enter_context(
            running(
                "stub", stub_command, url=f"http://127.0.0.1:{port}", health="/health", cpus=placement.load
            )
        )
        gateway, _ = stack.enter_context(_gateway(TWICE, stub.url, placement, None))
        for plan in plans:  # warm-up: the first psr request loads what the predictor needs
            run_wrk(
                gateway.url,
                connections=2,
                duration_s=1,
                stream=False,
                model=STUB_MODEL,
                auth=AUTH,
                cpus=placement.load,
                strategy=plan,
            )
        for repetition in range(repeats):
            for plan in plans if repetition % 2 == 0 else list(reversed(plans)):
                _log(
                    f"{time.monotonic() - started:5.0f} s  "
                    f"strategies, repetition {repetition + 1}/{repeats}: {plan}"
                )
                gateway_before, stub_before = gateway.cpu_seconds(), stub.cpu_seconds()
                result = run_wrk(
                    gateway.url,
                    connections=STRATEGY_CONCURRENCY,
                    duration_s=duration_s,
                    stream=False,
                    model=STUB_MODEL,
                    auth=AUTH,
                    cpus=placement.load,
                    strategy=plan,
                )
                done = max(1, result.requests - result.errors)
                results[plan].append(
                    (
                        (gateway.cpu_seconds() - gateway_before) * 1000 / done,
                        (stub.cpu_seconds() - stub_before) * 1000 / done,
                        result.rps,
                        result.errors,
                    )
                )
    return [
        StrategyRow(
            plan=plan,
            repetitions=len(runs),
            gateway_cpu_ms_per_request=statistics.median(r[0] for r in runs),
            stub_cpu_ms_per_request=statistics.median(r[1] for r in runs),
            rps=statistics.median(r[2] for r in runs),
            errors=sum(r[3] for r in runs),
        )
        for plan, runs in results.items()
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Gateway pass-through overhead, beside the floor proxy.")
    parser.add_argument("--quick", action="store_true", help="Smoke run: 2 s per measurement, 1 repetition.")
    parser.add_argument("--duration", type=float, help="Seconds per wrk measurement (default 5).")
    parser.add_argument("--repeats", type=int, help="Repetitions, medians reported (default 3).")
    parser.add_argument(
        "--ttft-requests", type=int, help="Streams timed for TTFT per measurement (default 40)."
    )
    parser.add_argument(
        "--targets", default="direct,floor,twice,litellm", help="Comma list of direct, floor, twice, litellm."
    )
    parser.add_argument(
        "--litellm-venv",
        type=Path,
        default=Path("/tmp/venv-litellm"),  # noqa: S108 - the shared harness's venv
        help="A venv with `litellm[proxy]`; LiteLLM is skipped when it has no bin/litellm.",
    )
    parser.add_argument(
        "--strategies",
        default="none,role_play,self_question,psr,self_refine",
        help="Plans measured with strategies on, against the vLLM stand-in (empty: none).",
    )
    parser.add_argument("--no-pin", action="store_true", help="Do not pin processes to CPUs.")
    parser.add_argument("--out", type=Path, help="Also write the results: .json for JSON, else Markdown.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if not have_wrk():
        print("bench/passthrough.py needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    litellm_venv: Path | None = args.litellm_venv
    targets = [t for t in args.targets.split(",") if t]
    if LITELLM in targets and (litellm_venv is None or not (litellm_venv / "bin" / "litellm").exists()):
        _log(
            f"LiteLLM skipped: no {litellm_venv}/bin/litellm "
            "(python -m venv DIR && DIR/bin/pip install 'litellm[proxy]')"
        )
        targets.remove(LITELLM)
        litellm_venv = None
    duration_s = args.duration or (2.0 if args.quick else 5.0)
    repeats = args.repeats or (1 if args.quick else 3)
    ttft_requests = args.ttft_requests or (15 if args.quick else 40)
    placement = Placement.choose(not args.no_pin)
    started = time.monotonic()
    meta: dict[str, object] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "bench/passthrough.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "placement": placement.describe(),
        "duration_s_per_measurement": duration_s,
        "repeats": repeats,
        "targets": targets,
    }
    _log(f"placement: {meta['placement']}; targets: {', '.join(targets)}")
    measurements, processes = run_benchmark(
        targets, duration_s, repeats, ttft_requests, placement, litellm_venv, started
    )
    plans = [p for p in args.strategies.split(",") if p]
    strategy_rows = run_strategies(plans, duration_s, repeats, placement, started) if plans else []
    meta["duration_s"] = round(time.monotonic() - started, 1)
    meta["load_average_at_end"] = round(os.getloadavg()[0], 2)
    table = rows(measurements, SCENARIOS, targets)
    twice_rss = processes.get(TWICE, {}).get("idle_rss_mb")
    checks = verdicts(table, twice_rss)
    header = (
        f"Pass-through benchmark, {meta['date']}: {meta['cpus']} CPUs ({meta['cpu_model']}), "
        f"{meta['placement']}; wrk, {duration_s:g} s per measurement, medians of {repeats}; "
        f"{meta['duration_s']} s in all; load average (1 min) {meta['load_average_at_start']} at start, "
        f"{meta['load_average_at_end']} at end."
    )
    parts = [header, markdown_table(table), markdown_processes(processes), markdown_verdicts(checks)]
    if strategy_rows:
        parts.append(markdown_strategies(strategy_rows))
    text = "\n\n".join(parts)
    print(text)
    if args.out:
        if args.out.suffix == ".json":
            record = json_record(meta, table, checks, processes, measurements, strategy_rows)
            args.out.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
        else:
            args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
