"""The telemetry writer against a real Redis: entries leave the response path through a bounded queue, a Redis
that stalls costs entries (counted), never a wait, and shutdown flushes within its bound."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from app.metrics import GatewayMetrics
from app.settings import RedisSettings, TelemetrySettings
from app.store import RedisStore
from app.telemetry import FLUSH_ON_CLOSE_S, Telemetry
from tests.support.chaos_proxy import running_chaos_proxy

DB = 10
ENTRY = {"features": "{}", "rounds_granted": "4", "rounds_used": "1", "outcome": "answered"}


def counted(metrics: GatewayMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value("twice_telemetry_entries_total", {"result": result})
    return float(value or 0.0)


@pytest.fixture
def redis_db() -> redis.Redis:
    client = redis.Redis(db=DB, decode_responses=True)
    client.flushdb()
    return client


@asynccontextmanager
async def writer(
    port: int, queue_size: int, timeout_s: float
) -> AsyncIterator[tuple[Telemetry, GatewayMetrics]]:
    url = SecretStr(f"redis://127.0.0.1:{port}/{DB}")
    settings = RedisSettings(url=url, socket_timeout_s=timeout_s, call_deadline_s=timeout_s)
    metrics = GatewayMetrics(CollectorRegistry())
    store = RedisStore(settings, metrics)
    telemetry = Telemetry(store, TelemetrySettings(queue_size=queue_size), metrics)
    telemetry.start()
    try:
        yield telemetry, metrics
    finally:
        await store.close()


async def test_entries_are_written_in_the_background(redis_db: redis.Redis) -> None:
    async with writer(6379, queue_size=100, timeout_s=1.0) as (telemetry, metrics):
        for _ in range(20):
            telemetry.submit(dict(ENTRY))
        await telemetry.close()
        assert redis_db.xlen("twice:telemetry") == counted(metrics, "written") == 20


async def test_a_stalled_redis_fills_the_queue_and_costs_entries_not_time(redis_db: redis.Redis) -> None:
    with running_chaos_proxy(upstream_port=6379) as proxy:
        proxy.set_mode("stall")
        async with writer(proxy.port, queue_size=3, timeout_s=10.0) as (telemetry, metrics):
            started = time.monotonic()
            for _ in range(10):
                telemetry.submit(dict(ENTRY))
            assert time.monotonic() - started < 0.05  # submitting never waits on Redis
            assert (telemetry.queued, counted(metrics, "overflow")) == (3, 7)
            # The writer takes an entry and waits on Redis; shutdown waits its bound, then counts the rest.
            started = time.monotonic()
            await telemetry.close()
            assert FLUSH_ON_CLOSE_S <= time.monotonic() - started < FLUSH_ON_CLOSE_S + 0.5
            assert counted(metrics, "written") == 0
            assert counted(metrics, "dropped") == 3
            assert telemetry.queued == 0
    assert redis_db.xlen("twice:telemetry") == 0
