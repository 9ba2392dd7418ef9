"""A closed-loop load generator for chat completions: `concurrency` clients on one keep-alive aiohttp session.

Each client sends its next request as soon as its previous answer is complete, until the fixed number of
requests is spent. A JSON answer counts when it is a 200 chat completion; a stream counts when it is a 200
that delivered content and ended with `data: [DONE]`. Time to first token is taken at the first event whose
delta carries non-empty content (the role-only first event does not count).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import aiohttp
import orjson

_HEADERS = {"Content-Type": "application/json"}
_DONE = b"data: [DONE]\n\n"


def chat_body(model: str, *, stream: bool, max_tokens: int) -> bytes:
    payload: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Name three phonetic alphabet words."}],
        "max_tokens": max_tokens,
    }
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return orjson.dumps(payload)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when there are none)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclasses.dataclass(frozen=True, slots=True)
class Measurement:
    """One timed run; latencies and times to first token in seconds, sorted."""

    requests: int
    errors: int
    wall_s: float
    latencies_s: tuple[float, ...]
    ttfts_s: tuple[float, ...]
    cpu_s: float | None = None  # CPU time the probed server process used during the timed run

    @property
    def requests_per_s(self) -> float:
        return (self.requests - self.errors) / self.wall_s if self.wall_s > 0 else math.nan

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies_s, q) * 1000

    def ttft_ms(self, q: float) -> float:
        return percentile(self.ttfts_s, q) * 1000

    @property
    def cpu_ms_per_request(self) -> float | None:
        done = self.requests - self.errors
        return None if self.cpu_s is None or done <= 0 else self.cpu_s * 1000 / done


@dataclasses.dataclass
class _Results:
    latencies_s: list[float]
    ttfts_s: list[float]
    errors: int = 0


def _first_content(buffer: bytes) -> bool:
    """Whether the complete events in `buffer` include one whose delta has non-empty content."""
    for event in buffer.split(b"\n\n")[:-1]:
        for line in event.split(b"\n"):
            if not line.startswith(b"data: {"):
                continue
            try:
                choices = orjson.loads(line[6:]).get("choices") or []
            except orjson.JSONDecodeError:
                continue
            if any((choice.get("delta") or {}).get("content") for choice in choices):
                return True
    return False


async def _one_json(session: aiohttp.ClientSession, url: str, body: bytes, results: _Results) -> None:
    started = time.perf_counter()
    async with session.post(url, data=body, headers=_HEADERS) as response:
        payload = await response.read()
        ok = response.status == 200 and b'"chat.completion"' in payload
    if ok:
        results.latencies_s.append(time.perf_counter() - started)
    else:
        results.errors += 1


async def _one_stream(session: aiohttp.ClientSession, url: str, body: bytes, results: _Results) -> None:
    started = time.perf_counter()
    first_token: float | None = None
    head = b""
    tail = b""
    async with session.post(url, data=body, headers=_HEADERS) as response:
        async for chunk in response.content.iter_any():
            if first_token is None:
                head += chunk
                if _first_content(head):
                    first_token = time.perf_counter()
            tail = (tail + chunk)[-len(_DONE) :]
        status = response.status
    if status == 200 and first_token is not None and tail == _DONE:
        results.latencies_s.append(time.perf_counter() - started)
        results.ttfts_s.append(first_token - started)
    else:
        results.errors += 1


async def _drive(
    session: aiohttp.ClientSession, url: str, body: bytes, *, stream: bool, concurrency: int, requests: int
) -> Measurement:
    results = _Results([], [])
    remaining = requests
    one = _one_stream if stream else _one_json

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                await one(session, url, body, results)
            except (aiohttp.ClientError, TimeoutError):
                results.errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall_s = time.perf_counter() - started
    return Measurement(
        requests=requests,
        errors=results.errors,
        wall_s=wall_s,
        latencies_s=tuple(sorted(results.latencies_s)),
        ttfts_s=tuple(sorted(results.ttfts_s)),
    )


async def measure(
    url: str,
    body: bytes,
    *,
    stream: bool,
    concurrency: int,
    requests: int,
    warmup: int,
    cpu_probe: Callable[[], float] | None = None,
) -> Measurement:
    """Warm up on the session the timed run uses (so its connections are open), then time `requests`.

    `cpu_probe` reads the server's CPU seconds so far; its increase over the timed run is recorded.
    """
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await _drive(session, url, body, stream=stream, concurrency=concurrency, requests=warmup)
        cpu_before = cpu_probe() if cpu_probe else 0.0
        timed = await _drive(session, url, body, stream=stream, concurrency=concurrency, requests=requests)
    if cpu_probe is None:
        return timed
    return dataclasses.replace(timed, cpu_s=cpu_probe() - cpu_before)
