"""A slow, stalled and flapping Redis: the gateway keeps answering within its budget, says it is degraded,
loses no request, and recovers by itself.

Redis is real; tests/support/chaos_proxy.py (a documented fake for the faults) sits between it and the
gateway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.experiments.support import chat, flushed, gateway_env, metric_value
from tests.support.chaos_proxy import ChaosProxy, Mode, running_chaos_proxy
from tests.support.polling import eventually
from tests.support.servers import running_gateway

DB = 11
DEADLINE_S = 0.25
BUDGET_S = 1.5
"""The most one request may take while Redis misbehaves: the stub answers at once, so this is Redis's deadline
(0.25 s, once, before Redis is marked down) and the gateway's own work, with room for a busy CI machine."""
PSR = {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "1"}


@pytest.fixture(scope="module")
def proxy() -> Iterator[ChaosProxy]:
    with running_chaos_proxy(upstream_port=6379, delay_s=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(proxy: ChaosProxy, stub_url: str) -> Iterator[str]:
    flushed(DB).close()
    env = gateway_env(
        DB,
        port=proxy.port,
        TWICE_CACHE__ENABLED="true",
        TWICE_REDIS__CALL_DEADLINE_S=str(DEADLINE_S),
        TWICE_REDIS__MAX_BACKOFF_S="0.5",
    )
    with running_gateway("--backend", "vllm", "--upstream", stub_url, env=env) as base:
        yield base


def redis_state(base: str) -> str:
    return str(httpx.get(f"{base}/ready", timeout=5).json()["redis"])


def timed_chats(base: str, count: int, label: str) -> list[float]:
    """`count` requests (cacheable ones and psr ones, alternating); each must be answered 200 with text."""
    seconds = []
    for i in range(count):
        started = time.monotonic()
        if i % 2:
            response = chat(base, headers=PSR, content=f"{label} psr {i}")
        else:
            response = chat(base, temperature=0, content=f"{label} cached {i}")
        seconds.append(time.monotonic() - started)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]
    return seconds


def recovered(base: str, proxy: ChaosProxy, label: str) -> None:
    proxy.set_mode("pass")
    _, seconds = eventually(lambda: redis_state(base) == "ok", timeout=10)
    assert seconds < 5
    written = metric_value(base, "twice_telemetry_entries_total", result="written")
    cache = [chat(base, temperature=0, content=f"after {label}").headers["x-twice-cache"] for _ in range(2)]
    assert cache == ["miss", "hit"]
    chat(base, headers=PSR, content=f"after {label} psr")
    eventually(lambda: metric_value(base, "twice_telemetry_entries_total", result="written") == written + 1)


@pytest.mark.parametrize("mode", ["delay", "trickle", "stall"])
def test_a_slow_or_stalled_redis_costs_each_request_at_most_its_deadline(
    gateway: str, proxy: ChaosProxy, mode: Mode
) -> None:
    assert max(timed_chats(gateway, 4, f"{mode} before")) < BUDGET_S
    assert redis_state(gateway) == "ok"
    dropped = metric_value(gateway, "twice_telemetry_entries_total", result="dropped")
    proxy.set_mode(mode)
    seconds = timed_chats(gateway, 10, mode)
    assert max(seconds) < BUDGET_S, seconds
    assert sorted(seconds)[len(seconds) // 2] < DEADLINE_S  # after the first miss, Redis is not waited on
    assert redis_state(gateway) == "degraded"
    # Telemetry left the response path: the psr requests' entries are dropped and counted, not waited for.
    eventually(
        lambda: metric_value(gateway, "twice_telemetry_entries_total", result="dropped") >= dropped + 1
    )
    recovered(gateway, proxy, mode)


def test_a_flapping_redis_loses_no_request_and_recovers(gateway: str, proxy: ChaosProxy) -> None:
    stop = threading.Event()

    def flap() -> None:
        modes: list[Mode] = ["drop", "pass", "stall", "pass", "delay", "pass"]
        step = 0
        while not stop.is_set():
            proxy.set_mode(modes[step % len(modes)])
            step += 1
            time.sleep(0.3)

    flapper = threading.Thread(target=flap, daemon=True)
    flapper.start()
    try:
        seconds = timed_chats(gateway, 30, "flapping")
    finally:
        stop.set()
        flapper.join(5)
    assert max(seconds) < BUDGET_S, seconds
    assert metric_value(gateway, "twice_redis_errors_total") >= 1
    recovered(gateway, proxy, "flapping")
