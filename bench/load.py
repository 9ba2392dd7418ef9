"""A bounded load test: many concurrent streaming and JSON clients against a real gateway, with faults.

    .venv/bin/python bench/load.py                       # vllm backend, fast loopback upstream, 10% faults
    .venv/bin/python bench/load.py --backend embedded    # 8 clients, 40 requests, max_tokens 16

Every request must end in a complete response or a clean error: a JSON answer or an OpenAI error object; a
stream that ends with `data: [DONE]` (after content, or after a final error event). Anything else is counted
as `incomplete`, and the run fails. The gateway's RSS is read from /proc at the start, the middle and the end.
The upstream is tests/support/fault_upstream.py in a thread of this process; faults are chosen per request
(hanging or resetting the stream, hanging before answering, a 5xx). Loopback only, bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.reliability.gateway import Gateway, launched, vllm_env
from tests.support.fault_upstream import FaultState, fault_marker, running_fault_upstream

FAULT_MIX = ("hang_mid_stream", "reset_mid_stream", "hang_before", "status_500")
EMBEDDED_MODEL = "smollm2-135m-instruct"


@dataclass
class Tally:
    kinds: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    rss: list[tuple[str, int]] = field(default_factory=list)


def classify_stream(body: bytes) -> str:
    events = [e for e in body.split(b"\n\n") if e.strip()]
    if not events or events[-1] != b"data: [DONE]":
        return "incomplete"
    if len(events) >= 2 and events[-2].startswith(b'data: {"error"'):
        error = orjson.loads(events[-2][6:])["error"]
        return f"stream_error:{error['type']}"
    return "ok"


def classify_json(status: int, body: bytes) -> str:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "incomplete"
    if status == 200 and isinstance(payload, dict) and payload.get("choices"):
        return "ok"
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return f"error:{status}"
    return "incomplete"


async def send(
    session: aiohttp.ClientSession, base: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[str, float, bool]:
    """(outcome, seconds, whether the answer came from the cache). A request past the session's timeout is
    `hung`; one the connection failed is `client:<error>`."""
    started = time.perf_counter()
    try:
        async with session.post(f"{base}/v1/chat/completions", json=body, headers=headers) as response:
            raw = await response.read()
            status = response.status
            hit = response.headers.get("x-twice-cache") == "hit"
    except TimeoutError:
        return "hung", time.perf_counter() - started, False
    except aiohttp.ClientError as exc:
        return f"client:{type(exc).__name__}", time.perf_counter() - started, False
    elapsed = time.perf_counter() - started
    if body.get("stream") and status == 200:
        return classify_stream(raw), elapsed, hit
    return classify_json(status, raw), elapsed, hit


def failed(kind: str) -> bool:
    """An outcome that is not a complete response or a clean error."""
    return kind in ("incomplete", "hung") or kind.startswith("client:")


async def one(
    session: aiohttp.ClientSession, url: str, model: str, max_tokens: int, stream: bool, fault: str | None
) -> tuple[str, float]:
    text = f"Say something short. {fault_marker(fault)}" if fault else "Say something short."
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    outcome, seconds, _ = await send(session, url, payload)
    return outcome, seconds


async def drive(
    gateway: Gateway, *, model: str, requests: int, concurrency: int, max_tokens: int, fault_rate: float
) -> Tally:
    tally = Tally()
    rng = random.Random(8)
    plan = [
        (rng.random() < 0.5, rng.choice(FAULT_MIX) if rng.random() < fault_rate else None)
        for _ in range(requests)
    ]
    queue: asyncio.Queue[tuple[bool, str | None]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    tally.rss.append(("start", gateway.rss_bytes()))
    done = 0
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            nonlocal done
            while not queue.empty():
                stream, fault = queue.get_nowait()
                kind, elapsed = await one(session, gateway.base, model, max_tokens, stream, fault)
                tally.kinds[kind] += 1
                tally.latencies.append(elapsed)
                done += 1
                if done == requests // 2:
                    tally.rss.append(("middle", gateway.rss_bytes()))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    tally.rss.append(("end", gateway.rss_bytes()))
    return tally


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextmanager
def gateway_for(backend: str) -> Iterator[Gateway]:
    if backend == "embedded":
        with launched({"TWICE_EMBEDDED__CONTEXTS": "1"}) as gateway:
            yield gateway
        return
    state = FaultState(hang_s=2.0, keep_received=False)
    with (
        running_fault_upstream(state) as (url, _),
        launched(vllm_env(url, TWICE_VLLM__READ_TIMEOUT_S="0.5")) as gateway,
    ):
        yield gateway


def report(args: argparse.Namespace, tally: Tally, wall: float) -> dict[str, Any]:
    rss = {name: round(value / 2**20, 1) for name, value in tally.rss}
    return {
        "backend": args.backend,
        "requests": sum(tally.kinds.values()),
        "concurrency": args.concurrency,
        "wall_s": round(wall, 2),
        "req_per_s": round(sum(tally.kinds.values()) / wall, 1),
        "outcomes": dict(sorted(tally.kinds.items())),
        "p50_ms": round(statistics.median(tally.latencies) * 1000, 1),
        "p99_ms": round(percentile(tally.latencies, 0.99) * 1000, 1),
        "rss_mib": rss,
        "peak_rss_mib": max(rss.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["vllm", "embedded"], default="vllm")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--fault-rate", type=float)
    args = parser.parse_args(argv)
    embedded = args.backend == "embedded"
    args.requests = args.requests or (40 if embedded else 2000)
    args.concurrency = args.concurrency or (8 if embedded else 64)
    fault_rate = 0.0 if embedded else (0.1 if args.fault_rate is None else args.fault_rate)
    with gateway_for(args.backend) as gateway:
        started = time.perf_counter()
        tally = asyncio.run(
            drive(
                gateway,
                model=EMBEDDED_MODEL if embedded else "stub-model",
                requests=args.requests,
                concurrency=args.concurrency,
                max_tokens=args.max_tokens,
                fault_rate=fault_rate,
            )
        )
        wall = time.perf_counter() - started
        log = gateway.log()
    result = report(args, tally, wall)
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    incomplete = sum(n for kind, n in tally.kinds.items() if failed(kind))
    if incomplete or "Traceback" in log:
        print(f"FAIL: {incomplete} incomplete responses; traceback in log: {'Traceback' in log}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
