"""The load generators: wrk (C, one thread, `wrk_post.lua` as the request) for latency and throughput, and a
sequential stdlib client for the time to first token (after the shared harness's `ttfb.py`).

wrk, not a Python client: a Python load generator on the upstream's core saturates near 2,700 requests/s and
then measures itself (issue #20). wrk with the fast mock reaches several times what any Python gateway serves
on one core; the direct-upstream row of every run shows how far.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from bench.processes import loopback_env, pinned

SCRIPT = Path(__file__).resolve().parent / "wrk_post.lua"
_CONTENT = re.compile(rb'"content"\s*:\s*"[^"]')


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str,
    *,
    connections: int,
    duration_s: float,
    stream: bool,
    model: str,
    auth: str,
    cpus: Sequence[int] | None,
    strategy: str | None = None,
) -> WrkResult:
    """One closed-loop wrk run against `url`'s /v1/chat/completions: `connections` keep-alive clients."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s", "--timeout", "10s"]
    command += ["-s", str(SCRIPT), url + "/v1/chat/completions"]
    env = loopback_env({"BENCH_STREAM": "1" if stream else "0", "BENCH_MODEL": model, "BENCH_AUTH": auth})
    if strategy is not None:
        env["BENCH_STRATEGY"] = strategy
    done = subprocess.run(pinned(command, cpus), env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            data = json.loads(line[7:])
            errors = sum(int(data[k]) for k in ("non2xx", "connect_err", "read_err", "write_err", "timeout"))
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=float(data["duration_s"]),
                rps=float(data["rps"]),
                p50_ms=float(data["p50_ms"]),
                p99_ms=float(data["p99_ms"]),
                errors=errors,
            )
    raise RuntimeError(
        f"wrk gave no result (exit {done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}"
    )


@dataclass(frozen=True, slots=True)
class TtftResult:
    requests: int
    errors: int
    ttft_p50_ms: float
    total_p50_ms: float


def _median(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def time_to_first_token(url: str, *, model: str, auth: str, requests: int, warmup: int = 3) -> TtftResult:
    """Sequential streams on one keep-alive connection: send to the first event whose delta carries content,
    and send to the end of the stream; medians in ms."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "max_tokens": 32,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Say hello in ten words, please."},
            ],
        }
    )
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {auth}"}
    firsts: list[float] = []
    totals: list[float] = []
    errors = 0
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        for index in range(warmup + requests):
            started = time.perf_counter()
            first: float | None = None
            try:
                connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
                response = connection.getresponse()
                while line := response.readline():
                    if first is None and line.startswith(b"data:") and _CONTENT.search(line):
                        first = time.perf_counter()
                ended = time.perf_counter()
                ok = response.status == 200 and first is not None
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=30)
                ok = False
            if index < warmup:
                continue
            if not ok or first is None:
                errors += 1
                continue
            firsts.append((first - started) * 1000)
            totals.append((ended - started) * 1000)
    finally:
        connection.close()
    return TtftResult(len(firsts), errors, _median(firsts), _median(totals))
