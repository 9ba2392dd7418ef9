"""The gateway's Redis connection, against the real Redis on 127.0.0.1:6379.

pytest turns warnings into errors here, so building the store in-process also checks that redis-py accepts
its retry policy as given (a synchronous `redis.retry.Retry` is converted with a UserWarning, and the
one-try policy would then rest on redis-py's conversion).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from app.metrics import GatewayMetrics
from app.settings import RedisSettings
from app.store import RedisStore, StoreUnavailable
from tests.experiments.support import OwnRedis
from tests.support.loopback import free_port


async def test_store_answers_and_tries_each_command_once() -> None:
    store = RedisStore(RedisSettings(), GatewayMetrics(CollectorRegistry()))
    try:
        assert await store.check()
        assert store.state == "ok"
        assert store.client is not None
        retry = store.client.get_retry()
        assert retry is not None
        assert retry.get_retries() == 0
        key = store.key("test-store", "ping")
        await store.run(lambda client: client.set(key, "1", ex=5))
        assert await store.run(lambda client: client.get(key)) == "1"
    finally:
        await store.close()


async def test_store_unreachable_degrades_instead_of_raising() -> None:
    # Port 1 refuses connections at once on loopback: a Redis that is down, without waiting on a timeout.
    settings = RedisSettings(url=SecretStr("redis://127.0.0.1:1/0"))
    store = RedisStore(settings, GatewayMetrics(CollectorRegistry()))
    try:
        assert not await store.check()
        assert store.state == "degraded"
        with pytest.raises(StoreUnavailable):
            await store.run(lambda client: client.get("anything"))
    finally:
        await store.close()


async def test_a_replica_that_refuses_writes_is_unavailable_not_an_error(tmp_path: Path) -> None:
    """After a fail-over the gateway may talk to a replica: it answers reads and refuses writes (READONLY).
    That is Redis unavailable for the gateway's purposes (degrade), not a bug of ours to raise."""
    server = OwnRedis(tmp_path)
    server.start()
    try:
        replica = redis.Redis(port=server.port)
        replica.replicaof("127.0.0.1", free_port())  # a master that is not there: the replica stays read-only
        replica.close()
        store = RedisStore(
            RedisSettings(url=SecretStr(f"redis://127.0.0.1:{server.port}/0"), max_backoff_s=0.2),
            GatewayMetrics(CollectorRegistry()),
        )
        try:
            assert await store.check()
            assert await store.run(lambda client: client.get("anything")) is None
            with pytest.raises(StoreUnavailable):
                await store.run(lambda client: client.set("anything", "1"))
            # Still a replica: the reconnect probe must not count it up (it answers PING), or every write
            # would mark it down again, a down/up cycle for as long as the fail-over lasts.
            await asyncio.sleep(1.0)
            assert store.state == "degraded"
            promoted = redis.Redis(port=server.port)
            promoted.replicaof("NO", "ONE")
            promoted.close()
            for _ in range(50):
                if _state(store) == "ok":
                    break
                await asyncio.sleep(0.1)
            assert _state(store) == "ok"
            await store.run(lambda client: client.set("anything", "1"))
        finally:
            await store.close()
    finally:
        server.stop()


def _state(store: RedisStore) -> str:
    """Read afresh: the state changes under an await, which a type checker's narrowing does not know."""
    return store.state
