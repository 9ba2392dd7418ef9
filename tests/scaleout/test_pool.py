"""The upstream pool and the vllm backend over it, in process, against real loopback vLLM stand-ins."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from app.backends.vllm import VllmBackend
from app.backends.vllm.transport import Transport
from app.settings import VllmSettings
from app.upstreams import UpstreamPool
from refiners.backend import BackendUnavailable, ChatMessage, GenerationRequest, Sampling
from tests.scaleout.replicas import Replica, replicas


@dataclass
class RecordingObserver:
    """Keeps what the pool reports (the gateway's `UpstreamMetrics` counts the same calls)."""

    calls: list[str] = field(default_factory=list)
    breaks: int = 0
    changes: list[tuple[str, bool]] = field(default_factory=list)
    state: dict[str, bool] = field(default_factory=dict)
    forgotten: list[str] = field(default_factory=list)

    def call(self, upstream: str) -> None:
        self.calls.append(upstream)

    def affinity_break(self) -> None:
        self.breaks += 1

    def health(self, upstream: str, healthy: bool, changed: bool) -> None:
        self.state[upstream] = healthy
        if changed:
            self.changes.append((upstream, healthy))

    def forget(self, upstream: str) -> None:
        self.forgotten.append(upstream)
        self.state.pop(upstream, None)


def request(key: str) -> GenerationRequest:
    return GenerationRequest(
        messages=(ChatMessage("user", "Tell me about lighthouses."),),
        sampling=Sampling(max_tokens=4),
        routing_key=key,
        model="stub-model",
    )


def settings(urls: list[str], **overrides: float) -> VllmSettings:
    """Health checks rare unless overridden, and no retries: only the pool's own moves save a call."""
    chosen: dict[str, float] = {"health_interval_s": 60.0, "retries": 0, **overrides}
    return VllmSettings(upstreams=urls, model="stub-model", **chosen)


@asynccontextmanager
async def checking(pool: UpstreamPool, with_settings: VllmSettings) -> AsyncIterator[None]:
    """`pool` started, health-checked by the vLLM client's own check, until the block ends."""
    transport = Transport(with_settings, pool)
    await transport.start()
    try:
        await pool.start(transport.healthy)
        yield
    finally:
        await pool.close()
        await transport.close()


async def wait_for(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_replica_down_at_start_takes_no_traffic() -> None:
    with replicas(2) as (up, down):
        down.stop()
        backend = VllmBackend(settings([up.url, down.url]))
        await backend.start()
        try:
            assert backend.upstreams_report()["healthy"] == 1
            assert await backend.check_ready()
            for _ in range(20):
                await backend.complete(request(uuid.uuid4().hex))
            assert up.calls == 20
        finally:
            await backend.close()


async def test_every_call_of_a_key_reaches_one_replica_and_keys_spread() -> None:
    with replicas(3) as started:
        backend = VllmBackend(settings([r.url for r in started]))
        await backend.start()
        try:
            keys = [uuid.uuid4().hex for _ in range(30)]
            for _ in range(3):
                await asyncio.gather(*(backend.complete(request(key)) for key in keys))
        finally:
            await backend.close()
        holders = {key: [r for r in started if key in r.routing_keys()] for key in keys}
        assert all(len(found) == 1 for found in holders.values())
        assert all(found[0].routing_keys().count(key) == 3 for key, found in holders.items())
        assert all(r.calls >= 3 for r in started)


async def test_a_refused_call_moves_the_rest_of_the_request_and_counts_one_break() -> None:
    with replicas(2) as started:
        backend = VllmBackend(settings([r.url for r in started]))
        observer = RecordingObserver()
        backend.observe_upstreams(observer)
        await backend.start()
        try:
            key = uuid.uuid4().hex
            await backend.complete(request(key))
            owner = next(r for r in started if key in r.routing_keys())
            other = next(r for r in started if r is not owner)
            owner.stop()
            # stop() blocked this loop; let it read the closed keep-alive connections, as it would have
            # while a real replica went away (a call racing that close fails: the one in flight).
            await asyncio.sleep(0.05)
            for _ in range(3):
                await backend.complete(request(key))  # retries=0: only the move saves these calls
            assert other.routing_keys().count(key) == 3
            assert observer.breaks == 1
            assert observer.changes == [(owner.url, False)]
            assert backend.upstreams_report()["upstreams"][owner.url] == "down"
            assert observer.calls == [owner.url] + [other.url] * 3
        finally:
            await backend.close()


async def test_health_checks_take_a_replica_out_and_bring_it_back() -> None:
    with replicas(2) as (steady, flaky):
        chosen = settings([steady.url, flaky.url], health_interval_s=0.05, unhealthy_after=2, healthy_after=3)
        pool = UpstreamPool(chosen)
        observer = RecordingObserver()
        pool.observe(observer)
        async with checking(pool, chosen):
            assert observer.state == {steady.url: True, flaky.url: True}
            flaky.stop()
            await wait_for(lambda: not observer.state[flaky.url])
            assert pool.report()["healthy"] == 1
            assert pool.pick("any-key").url == steady.url
            flaky.start()
            await wait_for(lambda: observer.state[flaky.url])
            assert observer.changes == [(flaky.url, False), (flaky.url, True)]
            assert pool.report() == {
                "mode": "list",
                "healthy": 2,
                "total": 2,
                "upstreams": {steady.url: "up", flaky.url: "up"},
            }


async def test_dns_discovery_adds_checks_and_drops_addresses() -> None:
    with replicas(1) as (replica,):
        answers: list[list[str] | OSError] = [["127.0.0.1"]]

        async def resolver(host: str, port: int) -> list[str]:
            # A stand-in for DNS (no DNS server here): the host is the test's own name, the answers scripted.
            assert (host, port) == ("vllm-headless.test", replica.port)
            answer = answers[0]
            if isinstance(answer, OSError):
                raise answer
            return answer

        chosen = VllmSettings(
            upstreams_dns=f"vllm-headless.test:{replica.port}",
            health_interval_s=0.05,
            dns_refresh_s=0.05,
            unhealthy_after=1,
            healthy_after=1,
        )
        pool = UpstreamPool(chosen, resolver=resolver)
        observer = RecordingObserver()
        pool.observe(observer)
        other = f"http://127.0.0.2:{replica.port}"  # nothing listens there: discovered, never healthy
        async with checking(pool, chosen):
            assert pool.report()["mode"] == "dns"
            assert pool.urls == [replica.url]
            assert pool.healthy_count() == 1
            answers[0] = ["127.0.0.1", "127.0.0.2"]
            await wait_for(lambda: other in pool.urls)
            await asyncio.sleep(0.3)
            assert pool.report()["upstreams"] == {replica.url: "up", other: "down"}
            answers[0] = OSError("temporary failure in name resolution")
            await asyncio.sleep(0.2)
            assert sorted(pool.urls) == sorted([replica.url, other])
            answers[0] = ["127.0.0.2"]
            await wait_for(lambda: pool.urls == [other])
            assert observer.forgotten == [replica.url]


async def test_concurrent_first_requests_ask_vllm_for_its_models_once() -> None:
    """The cause of a flaky scale-out test: each of the first concurrent requests asked for the model list
    (round-robin over the replicas, so one replica could get two), one more call than a request makes."""
    with replicas(3) as started:
        backend = VllmBackend(settings([r.url for r in started]))  # the model is set: start() lists none
        await backend.start()
        try:
            answers = await asyncio.gather(*(backend.serves("stub-model") for _ in range(8)))
            assert answers == [True] * 8
            assert sum(r.state.model_lists for r in started) == 1
            # Within the refresh interval an unknown name does not ask again, and is not served.
            assert await asyncio.gather(*(backend.serves("other") for _ in range(4))) == [False] * 4
            assert sum(r.state.model_lists for r in started) == 1
        finally:
            await backend.close()


async def test_no_upstream_known_is_a_backend_unavailable() -> None:
    async def nothing(host: str, port: int) -> list[str]:
        return []  # a stand-in for DNS answering with no address

    chosen = VllmSettings(upstreams_dns="vllm-headless.test:8000", model="stub-model")
    backend = VllmBackend(chosen, pool=UpstreamPool(chosen, resolver=nothing))
    await backend.start()
    try:
        assert not await backend.check_ready()
        with pytest.raises(BackendUnavailable):
            await backend.complete(request("k"))
    finally:
        await backend.close()


def test_replica_restarts_on_its_port() -> None:
    replica = Replica().start()
    port = replica.port
    replica.stop()
    replica.start()
    try:
        assert replica.port == port
    finally:
        replica.stop()
