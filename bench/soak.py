"""A soak: minutes of mixed traffic against two real gateways, with upstream faults throughout and Redis
restarted twice. Loopback only, bounded in time and in count.

    .venv/bin/python bench/soak.py                        # 11 minutes (1 warm-up + 5 phases of 2)
    .venv/bin/python bench/soak.py --minutes 2 --warmup-s 20   # a short check

- gateway `vllm`: the vllm backend in front of tests/support/fault_upstream.py (faults chosen per request:
  hangs, resets, 5xx), 8 clients: pass-through JSON and streams, cacheable repeats (cache hits), psr over the
  stand-in's verdicts; 10% of requests carry a fault;
- gateway `embedded`: SmolLM2 on llama.cpp, one client alternating psr (2 rounds) and self_refine;
- both share a redis-server of their own, restarted at the start of phases 2 and 4 (down for 5 s).

Every request must end complete or with a clean error (bench/load.py's rules); one that takes longer than
its client timeout is `hung`. Fails (exit 1) on any incomplete or hung request, a traceback in a gateway's
log, resident memory after warm-up growing more than 10%, or open file descriptors growing by more than 8.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import FAULT_MIX, percentile, send
from tests.experiments.support import OwnRedis
from tests.reliability.gateway import Gateway, launched, vllm_env
from tests.support.fault_upstream import FaultState, fault_marker, running_fault_upstream

EMBEDDED_MODEL = "smollm2-135m-instruct"
PHASES = 5
REDIS_RESTART_PHASES = (2, 4)
REDIS_DOWN_S = 5.0
CLIENT_TIMEOUT_S = 60.0
VLLM_CLIENTS = 8
PAUSE_S = 0.05
"""Between two requests of one vllm client: a steady load (at most 160 requests/s), not a throughput test."""
MAX_REQUESTS = 200_000
CACHED_PROMPTS = [f"A cached question, number {i}." for i in range(20)]


@dataclass
class Sample:
    gateway: str
    kind: str
    phase: str
    outcome: str
    seconds: float
    cache_hit: bool = False


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)
    resources: dict[str, list[tuple[float, int, int]]] = field(default_factory=lambda: defaultdict(list))
    """gateway -> [(seconds since start, RSS bytes, open fds)]"""
    events: list[tuple[float, str]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    phase: str = "warmup"

    def now(self) -> float:
        return time.monotonic() - self.started


def vllm_request(rng: random.Random) -> tuple[str, dict[str, Any], dict[str, str]]:
    """One request of the vllm gateway's mix: (kind, body, headers)."""
    roll = rng.random()
    fault = rng.choice(FAULT_MIX) if rng.random() < 0.1 else None
    text = "Say something short." + (f" {fault_marker(fault)}" if fault else "")
    body: dict[str, Any] = {"model": "stub-model", "max_tokens": 16}
    headers: dict[str, str] = {}
    if roll < 0.35:
        kind, body["stream"] = "pass_json", False
    elif roll < 0.7:
        kind, body["stream"] = "pass_stream", True
    elif roll < 0.85:
        kind, text = "cached", rng.choice(CACHED_PROMPTS)
        body.update(stream=rng.random() < 0.5, temperature=0)
    else:
        kind, body["stream"] = "psr_stub", rng.random() < 0.5
        headers = {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "2"}
    body["messages"] = [{"role": "user", "content": text}]
    return kind, body, headers


async def vllm_client(
    soak: Soak, gateway: Gateway, seed: int, until: float, budget: itertools.count[int]
) -> None:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while soak.now() < until and next(budget) < MAX_REQUESTS:
            kind, body, headers = vllm_request(rng)
            outcome, seconds, hit = await send(session, gateway.base, body, headers)
            soak.samples.append(Sample("vllm", kind, soak.phase, outcome, seconds, hit))
            await asyncio.sleep(PAUSE_S)


async def embedded_client(soak: Soak, gateway: Gateway, until: float) -> None:
    plans = itertools.cycle(
        [
            ("psr", {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "2"}),
            ("self_refine", {"X-Twice-Strategy": "self_refine"}),
        ]
    )
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for number in itertools.count():
            if soak.now() >= until:
                return
            kind, headers = next(plans)
            body = {
                "model": EMBEDDED_MODEL,
                "messages": [{"role": "user", "content": f"Name one use of a paperclip ({number})."}],
                "max_tokens": 16,
                "stream": number % 4 < 2,
            }
            outcome, seconds, _ = await send(session, gateway.base, body, headers)
            soak.samples.append(Sample("embedded", kind, soak.phase, outcome, seconds))


async def watch(
    soak: Soak, gateways: dict[str, Gateway], redis: OwnRedis, phase_s: float, until: float
) -> None:
    """Samples memory and descriptors every 5 s; moves the phase on and restarts Redis on schedule."""
    next_sample = 0.0
    for phase in range(1, PHASES + 1):
        start = until - (PHASES - phase + 1) * phase_s
        while soak.now() < start:
            if soak.now() >= next_sample:
                sample_resources(soak, gateways)
                next_sample = soak.now() + 5
            await asyncio.sleep(0.2)
        soak.phase = f"phase{phase}"
        soak.events.append((round(soak.now(), 1), soak.phase))
        if phase in REDIS_RESTART_PHASES:
            await asyncio.to_thread(redis.stop)
            soak.events.append((round(soak.now(), 1), "redis stopped"))
            await asyncio.sleep(REDIS_DOWN_S)
            await asyncio.to_thread(redis.start)
            soak.events.append((round(soak.now(), 1), "redis started"))
    while soak.now() < until:
        if soak.now() >= next_sample:
            sample_resources(soak, gateways)
            next_sample = soak.now() + 5
        await asyncio.sleep(0.2)
    sample_resources(soak, gateways)


def sample_resources(soak: Soak, gateways: dict[str, Gateway]) -> None:
    for name, gateway in gateways.items():
        soak.resources[name].append((round(soak.now(), 1), gateway.rss_bytes(), gateway.open_fds()))


async def run(
    soak: Soak, gateways: dict[str, Gateway], redis: OwnRedis, warmup_s: float, phase_s: float
) -> None:
    until = warmup_s + PHASES * phase_s
    budget = itertools.count()
    await asyncio.gather(
        watch(soak, gateways, redis, phase_s, until),
        embedded_client(soak, gateways["embedded"], until),
        *(vllm_client(soak, gateways["vllm"], seed, until, budget) for seed in range(VLLM_CLIENTS)),
    )


def summary(soak: Soak, warmup_s: float, logs: dict[str, str]) -> dict[str, Any]:
    by_phase: dict[str, dict[str, Any]] = {}
    for (gateway, phase), samples in sorted(group(soak.samples).items()):
        seconds = [s.seconds for s in samples]
        by_phase[f"{gateway}/{phase}"] = {
            "requests": len(samples),
            "outcomes": dict(sorted(Counter(s.outcome for s in samples).items())),
            "kinds": dict(sorted(Counter(s.kind for s in samples).items())),
            "cache_hits": sum(s.cache_hit for s in samples),
            "p50_ms": round(statistics.median(seconds) * 1000, 1),
            "p99_ms": round(percentile(seconds, 0.99) * 1000, 1),
        }
    resources = {}
    for name, rows in soak.resources.items():
        after_warmup = [row for row in rows if row[0] >= warmup_s]
        base_rss, base_fds = after_warmup[0][1], after_warmup[0][2]
        resources[name] = {
            "rss_mib_after_warmup": round(base_rss / 2**20, 1),
            "rss_mib_max_after": round(max(r[1] for r in after_warmup) / 2**20, 1),
            "rss_mib_end": round(after_warmup[-1][1] / 2**20, 1),
            "rss_growth_pct": round(100 * (max(r[1] for r in after_warmup) / base_rss - 1), 1),
            "fds_after_warmup": base_fds,
            "fds_max_after": max(r[2] for r in after_warmup),
            "fds_end": after_warmup[-1][2],
        }
    outcomes = Counter(s.outcome for s in soak.samples)
    return {
        "requests": len(soak.samples),
        "outcomes": dict(sorted(outcomes.items())),
        "lost": sum(n for kind, n in outcomes.items() if kind == "incomplete" or kind.startswith("client:")),
        "hung": outcomes["hung"],
        "tracebacks": {name: "Traceback" in log for name, log in logs.items()},
        "events": soak.events,
        "phases": by_phase,
        "resources": resources,
    }


def group(samples: list[Sample]) -> dict[tuple[str, str], list[Sample]]:
    grouped: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for sample in samples:
        grouped[(sample.gateway, sample.phase)].append(sample)
    return grouped


def failures(result: dict[str, Any]) -> list[str]:
    found = []
    if result["lost"] or result["hung"]:
        found.append(f"{result['lost']} lost and {result['hung']} hung requests")
    found += [f"traceback in the {name} gateway's log" for name, seen in result["tracebacks"].items() if seen]
    for name, used in result["resources"].items():
        if used["rss_growth_pct"] > 10:
            found.append(f"{name}: memory grew {used['rss_growth_pct']}% after warm-up")
        if used["fds_end"] > used["fds_after_warmup"] + 8:
            found.append(f"{name}: open descriptors {used['fds_after_warmup']} -> {used['fds_end']}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="Length of the five measured phases.")
    parser.add_argument("--warmup-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path, help="Also write the result here (JSON).")
    args = parser.parse_args(argv)
    phase_s = args.minutes * 60 / PHASES
    soak = Soak()
    with tempfile.TemporaryDirectory(prefix="twice-soak-") as folder, ExitStack() as stack:
        redis = OwnRedis(Path(folder))
        redis.start()
        stack.callback(redis.stop)
        shared = {
            "TWICE_REDIS__ENABLED": "true",
            "TWICE_REDIS__URL": f"redis://127.0.0.1:{redis.port}/0",
            "TWICE_PLAN__PREDICTOR": "false",
            "TWICE_PLAN__CLIENT_MAY_LOWER_ROUNDS": "true",
        }
        upstream, _ = stack.enter_context(running_fault_upstream(FaultState(hang_s=2.0, keep_received=False)))
        vllm_settings = vllm_env(upstream, TWICE_VLLM__READ_TIMEOUT_S="0.5", TWICE_CACHE__ENABLED="true")
        embedded_settings = {
            "TWICE_EMBEDDED__MODEL": EMBEDDED_MODEL,
            "TWICE_EMBEDDED__N_THREADS": "1",
            "TWICE_PSR__CHUNK_TOKENS": "8",
            "TWICE_SELF_REFINE__FEEDBACK_TOKENS": "32",
        }
        gateways = {
            "vllm": stack.enter_context(launched({**shared, **vllm_settings})),
            "embedded": stack.enter_context(launched({**shared, **embedded_settings})),
        }
        soak.started = time.monotonic()
        asyncio.run(run(soak, gateways, redis, args.warmup_s, phase_s))
        logs = {name: gateway.log() for name, gateway in gateways.items()}
    result = {
        "command": "bench/soak.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "minutes": args.minutes,
        "warmup_s": args.warmup_s,
        **summary(soak, args.warmup_s, logs),
    }
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    found = failures(result)
    for failure in found:
        print(f"FAIL: {failure}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
