"""The vLLM upstream pool (app/upstreams.py): the choice of an upstream, health checks taking one out and
bringing it back, DNS discovery, and what the pool reports to its observer (the gateway's `UpstreamMetrics`).

Health is checked by the vLLM client's own check (`Transport.healthy`) against real `/health` servers on
loopback, served on the test's event loop; only DNS is scripted (there is no DNS server here)."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from app.backends.vllm.transport import Transport
from app.metrics import UpstreamMetrics
from app.settings import VllmSettings, parse_dns_target
from app.upstreams import HealthCheck, Upstream, UpstreamPool, rank, resolve_host
from tests.support.loopback import free_port

FAST = {"health_interval_s": 0.02, "health_timeout_s": 0.3, "retries": 0}
"""Checks every 20 ms: a round of checks against loopback takes a few ms."""


@dataclass
class Health:
    """What one stand-in's `GET /health` answers: `script` in order, then `status`; after `hang_s`."""

    status: int = 200
    script: deque[int] = field(default_factory=deque)
    hang_s: float = 0.0
    checks: int = 0


@asynccontextmanager
async def health_server(health: Health, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """A loopback server answering `GET /health` as `health` says; yields its base URL."""

    async def answer(_: web.Request) -> web.Response:
        health.checks += 1
        status = health.script.popleft() if health.script else health.status
        if health.hang_s:
            await asyncio.sleep(health.hang_s)
        return web.Response(status=status)

    app = web.Application()
    app.router.add_get("/health", answer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def health_servers(*healths: Health) -> AsyncIterator[list[str]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(health_server(health)) for health in healths]


@asynccontextmanager
async def started(
    pool: UpstreamPool, settings: VllmSettings, check: Callable[[Transport], HealthCheck] | None = None
) -> AsyncIterator[Transport]:
    """`pool` started, checked by the vLLM client's check (or `check(transport)`), until the block ends."""
    transport = Transport(settings, pool)
    await transport.start()
    try:
        await pool.start(transport.healthy if check is None else check(transport))
        yield transport
    finally:
        await pool.close()
        await transport.close()


async def until(condition: Callable[[], object], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class Metrics(UpstreamMetrics):
    """The gateway's upstream metrics (the pool's observer) on a registry of their own, read back."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        super().__init__(self.registry)

    def gauge(self, url: str) -> float | None:
        return self.registry.get_sample_value("twice_upstream_healthy", {"upstream": url})

    def changes(self, url: str, state: str) -> float:
        labels = {"upstream": url, "state": state}
        return self.registry.get_sample_value("twice_upstream_health_changes_total", labels) or 0.0

    def calls_to(self, url: str) -> float:
        return self.registry.get_sample_value("twice_upstream_calls_total", {"upstream": url}) or 0.0

    def breaks(self) -> float:
        return self.registry.get_sample_value("twice_affinity_breaks_total") or 0.0


def members(pool: UpstreamPool) -> dict[str, Upstream]:
    """The pool's upstreams by URL, as `pick` gives them (64 keys reach every one of a few upstreams)."""
    return {upstream.url: upstream for upstream in (pool.pick(f"key-{n}") for n in range(64))}


def listed(urls: Iterable[str], **overrides: Any) -> VllmSettings:
    return VllmSettings(upstreams=list(urls), model="stub-model", **{**FAST, **overrides})


class ScriptedDns:
    """A stand-in for DNS (no DNS server here): answers, or raises, what the test sets; counts questions."""

    def __init__(self, answer: list[str] | Exception) -> None:
        self.answer = answer
        self.questions: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.questions.append((host, port))
        if isinstance(self.answer, Exception):
            raise self.answer
        return list(self.answer)


# --- one upstream, and the choice among several ------------------------------------------------------------


async def test_a_single_upstream_is_used_as_it_is_never_checked_nor_taken_out() -> None:
    health = Health(status=503)
    async with health_server(health) as url:
        chosen = VllmSettings(upstream=url + "/", **FAST)
        pool = UpstreamPool(chosen)
        metrics = Metrics()
        pool.observe(metrics)
        async with started(pool, chosen):
            await asyncio.sleep(0.1)
            assert health.checks == 0
            assert pool.report() == {"mode": "single", "healthy": 1, "total": 1, "upstreams": {url: "up"}}
            assert not pool.call_failed(pool.pick("key"))
            assert pool.pick(None).healthy
        assert metrics.gauge(url) is None  # a single upstream has no health to report


async def test_start_probes_each_upstream_once_and_only_a_healthy_one_takes_traffic() -> None:
    ok, sick, slow = Health(), Health(status=503), Health(hang_s=0.6)
    async with health_servers(ok, sick, slow) as (ok_url, sick_url, slow_url):
        refused = f"http://127.0.0.1:{free_port()}"
        chosen = listed([ok_url, sick_url, slow_url, refused], health_interval_s=60.0, health_timeout_s=0.2)
        pool = UpstreamPool(chosen)
        metrics = Metrics()
        pool.observe(metrics)
        async with started(pool, chosen):
            assert (ok.checks, sick.checks, slow.checks) == (1, 1, 1)
            assert pool.report()["upstreams"] == {
                ok_url: "up",
                sick_url: "down",
                slow_url: "down",
                refused: "down",
            }
            assert {pool.pick(f"key-{n}").url for n in range(40)} == {ok_url}
            assert {pool.pick(None).url for _ in range(8)} == {ok_url}
        assert [metrics.gauge(url) for url in (ok_url, sick_url, slow_url, refused)] == [1, 0, 0, 0]
        # Where an upstream starts is its first state, not a change.
        assert sum(metrics.changes(url, "down") for url in (sick_url, slow_url, refused)) == 0


def test_a_key_goes_to_its_first_ranked_upstream_every_time() -> None:
    urls = [f"http://10.0.0.{n}:8000" for n in range(1, 4)]
    pool = UpstreamPool(listed(urls))
    for n in range(30):
        key = f"chatcmpl-{n}"
        assert pool.pick(key).url == rank(key, urls)[0]
        assert pool.pick(key) is pool.pick(key)
    assert {pool.pick(f"chatcmpl-{n}").url for n in range(30)} == set(urls)


def test_with_no_upstream_healthy_calls_go_round_robin_over_all() -> None:
    urls = [f"http://10.0.0.{n}:8000" for n in range(1, 4)]
    pool = UpstreamPool(listed(urls))
    for upstream in members(pool).values():
        assert pool.call_failed(upstream)
    assert pool.healthy_count() == 0
    picked = [pool.pick(None).url for _ in range(6)]
    assert sorted(picked[:3]) == urls
    assert picked[3:] == picked[:3]


async def test_no_upstream_known_yet_is_a_lookup_error() -> None:
    chosen = VllmSettings(upstreams_dns="vllm-headless.test:8000", **FAST)
    pool = UpstreamPool(chosen, resolver=ScriptedDns([]))
    async with started(pool, chosen):
        assert pool.urls == []
        with pytest.raises(LookupError, match="no vLLM upstream"):
            pool.pick("key")
        with pytest.raises(LookupError):
            pool.pick(None)


# --- health ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "seen", "downs", "ups"),
    [
        pytest.param(
            [200, 503, 503, 503, 200, 200, 200],
            ["up", "up", "up", "up", "down", "down", "up"],
            1,
            1,
            id="out-after-3-failures-back-after-2-successes",
        ),
        pytest.param(
            [200, 503, 503, 200, 503, 503, 200],
            ["up"] * 7,
            0,
            0,
            id="a-success-restarts-the-failure-count",
        ),
        pytest.param(
            # Down from the first check (where it starts, not a change), then 2 successes in a row to join.
            [503, 200, 503, 200, 200, 200],
            ["up", "down", "down", "down", "down", "up"],
            0,
            1,
            id="a-failure-restarts-the-success-count",
        ),
    ],
)
async def test_consecutive_checks_take_an_upstream_out_and_bring_it_back(
    script: list[int], seen: list[str], downs: int, ups: int
) -> None:
    health = Health(script=deque(script))
    async with health_server(health) as url:
        chosen = listed([url], unhealthy_after=3, healthy_after=2)
        pool = UpstreamPool(chosen)
        metrics = Metrics()
        pool.observe(metrics)
        before: list[str] = []

        def recording(transport: Transport) -> HealthCheck:
            async def check(checked: str) -> bool:
                before.append(pool.report()["upstreams"][checked])  # the state this check's result meets
                return await transport.healthy(checked)

            return check

        async with started(pool, chosen, recording):
            await until(lambda: len(before) >= len(script) + 1)
        assert before[: len(seen)] == seen  # the first entry: the state before the first check
        assert (metrics.changes(url, "down"), metrics.changes(url, "up")) == (downs, ups)
        assert metrics.gauge(url) == 1


async def test_a_refused_call_takes_its_upstream_out_at_once_and_checks_bring_it_back() -> None:
    healths = Health(), Health()
    async with health_servers(*healths) as urls:
        chosen = listed(urls, unhealthy_after=3, healthy_after=3, health_interval_s=0.05)
        pool = UpstreamPool(chosen)
        metrics = Metrics()
        pool.observe(metrics)
        async with started(pool, chosen):
            key = "chatcmpl-affine"
            owner = pool.pick(key)
            health = healths[urls.index(owner.url)]
            checked = health.checks
            assert pool.call_failed(owner)
            assert not pool.call_failed(owner)  # out already: the call's next attempt moves, once
            assert pool.pick(key).url == next(url for url in urls if url != owner.url)
            assert pool.report()["upstreams"][owner.url] == "down"
            assert (metrics.gauge(owner.url), metrics.changes(owner.url, "down")) == (0, 1)
            await until(lambda: owner.healthy)
            # Back after `healthy_after` (3) passed checks, not the next one (one may have been under way).
            assert health.checks - checked >= 2
            assert pool.pick(key) is owner
            assert metrics.changes(owner.url, "up") == 1


def test_a_failed_call_to_an_upstream_the_pool_does_not_hold_changes_nothing() -> None:
    urls = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    pool = UpstreamPool(listed(urls))
    metrics = Metrics()
    pool.observe(metrics)
    stranger = Upstream("http://10.0.0.9:8000")
    assert not pool.call_failed(stranger)
    assert stranger.healthy
    assert pool.healthy_count() == 2
    assert metrics.changes(stranger.url, "down") == 0


async def test_a_failed_call_to_an_upstream_dns_dropped_and_found_again_changes_nothing() -> None:
    """A call that picked an upstream before DNS dropped its address and found it again holds the old member:
    its failure must not take out (nor report down) the new member, which has health checks of its own."""
    dns = ScriptedDns(["10.0.0.1"])
    target = "vllm-headless.test:8000"
    chosen = VllmSettings(upstreams_dns=target, dns_refresh_s=0.02, healthy_after=1, **FAST)
    pool = UpstreamPool(chosen, resolver=dns)
    metrics = Metrics()
    pool.observe(metrics)

    async def always_up(url: str) -> bool:
        return True

    async with started(pool, chosen, check=lambda transport: always_up):
        old = pool.pick(None)
        dns.answer = ["10.0.0.2"]
        await until(lambda: old.url not in pool.urls)
        dns.answer = ["10.0.0.2", "10.0.0.1"]
        await until(lambda: pool.healthy_count() == 2)
        new = members(pool)[old.url]
        assert new is not old
        assert not pool.call_failed(old)
        assert new.healthy
        assert metrics.changes(old.url, "down") == 0
        assert metrics.gauge(old.url) == 1


async def test_a_check_that_raises_does_not_stop_the_checking() -> None:
    health = Health()
    async with health_server(health) as url:
        chosen = listed([url], unhealthy_after=1, healthy_after=1)
        pool = UpstreamPool(chosen)
        rounds: list[int] = []

        def failing_twice(transport: Transport) -> HealthCheck:
            async def check(checked: str) -> bool:
                rounds.append(len(rounds))
                if len(rounds) in (2, 3):
                    # A fake fault: the vLLM client's check never raises (it answers False), but a round
                    # that does must not end the watcher and freeze the pool.
                    raise RuntimeError("a check that broke")
                return await transport.healthy(checked)

            return check

        async with started(pool, chosen, failing_twice):
            await until(lambda: len(rounds) >= 6)
            health.status = 503
            await until(lambda: not pool.pick(None).healthy)


async def test_a_round_with_a_check_that_raises_waits_for_its_other_checks() -> None:
    """The next round starts only when every check of this one has ended, so one upstream is never checked
    twice at once (and a late result never lands after a newer one)."""
    async with health_server(Health()) as first, health_server(Health()) as second:
        chosen = listed([first, second], unhealthy_after=1, healthy_after=1)
        pool = UpstreamPool(chosen)
        in_flight: dict[str, int] = {first: 0, second: 0}
        most = {first: 0, second: 0}
        slow_checks: list[str] = []
        first_checks: list[str] = []

        def one_raises_one_slow(transport: Transport) -> HealthCheck:
            async def check(checked: str) -> bool:
                if checked == first:
                    first_checks.append(checked)
                    if len(first_checks) > 1:  # the start-up probe passes; the rounds' checks raise
                        raise RuntimeError("a check that broke")  # a fake fault, as above
                    return True
                in_flight[checked] += 1
                most[checked] = max(most[checked], in_flight[checked])
                try:
                    await asyncio.sleep(FAST["health_interval_s"] * 5)  # slower than the interval
                    slow_checks.append(checked)
                    return await transport.healthy(checked)
                finally:
                    in_flight[checked] -= 1

            return check

        async with started(pool, chosen, one_raises_one_slow):
            await until(lambda: len(slow_checks) >= 3)
        assert most[second] == 1


async def test_close_stops_the_checks() -> None:
    health = Health()
    async with health_server(health) as url:
        chosen = listed([url])
        pool = UpstreamPool(chosen)
        await pool.close()  # never started: nothing to stop
        transport = Transport(chosen, pool)
        await transport.start()
        try:
            await pool.start(transport.healthy)
            await until(lambda: health.checks >= 3)
            await pool.close()
            checks = health.checks
            await asyncio.sleep(0.15)  # the check still works: only the pool stopped asking
            assert health.checks == checks
            assert await transport.healthy(url)
            await pool.close()  # closed already
        finally:
            await transport.close()


# --- what the pool reports ------------------------------------------------------------------------------


def test_calls_are_counted_per_upstream_and_a_moved_key_is_one_break() -> None:
    urls = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    pool = UpstreamPool(listed(urls))
    metrics = Metrics()
    pool.observe(metrics)
    first, second = (members(pool)[url] for url in urls)
    pool.record_call(first, "k", track=True)
    pool.record_call(first, "k", track=True)
    assert metrics.breaks() == 0
    pool.record_call(second, "k", track=True)
    assert metrics.breaks() == 1
    pool.record_call(first, "k", track=True)  # broken already: counted once per key
    pool.record_call(first, "single-call", track=False)
    pool.record_call(second, "single-call", track=False)  # a key with no further calls has no affinity
    pool.record_call(first, None, track=True)
    pool.record_call(second, None, track=True)
    assert metrics.breaks() == 1
    assert (metrics.calls_to(first.url), metrics.calls_to(second.url)) == (5, 3)


def test_a_new_observer_hears_every_upstreams_state_then_every_change() -> None:
    urls = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    pool = UpstreamPool(listed(urls))
    earlier, later = Metrics(), Metrics()
    pool.observe(earlier)
    first, second = (members(pool)[url] for url in urls)
    pool.call_failed(second)
    pool.observe(later)
    assert [later.gauge(url) for url in urls] == [1, 0]
    assert later.changes(urls[1], "down") == 0  # the current state, not a change
    pool.call_failed(first)
    assert (later.changes(urls[0], "down"), earlier.changes(urls[0], "down")) == (1, 0)
    pool.record_call(first, None, track=False)
    assert (later.calls_to(urls[0]), earlier.calls_to(urls[0])) == (1, 0)


# --- DNS discovery -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" vllm:8000 ", ("vllm", 8000)),
        ("http://vllm-headless.llm:1", ("vllm-headless.llm", 1)),
        ("http://10.1.2.3:65535/", ("10.1.2.3", 65535)),
        ("[fd00::7]:8000", ("fd00::7", 8000)),
    ],
)
def test_a_dns_target_is_host_and_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_dns_target(value) == expected


@pytest.mark.parametrize("value", ["", "vllm", "vllm:", "vllm:80a", "vllm:-1", "http://:8000"])
def test_a_dns_target_without_a_host_and_a_numeric_port_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_dns_target(value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("https://vllm:8000", "no scheme but http://"),
        ("grpc://vllm:8000", "no scheme but http://"),
        ("vllm/v1:8000", "no path"),
        ("http://vllm:8000/v1", "no path"),
        ("vllm:8000?x=1", "no path"),
        ("admin@vllm:8000", "no path"),
        ("vllm:0", "from 1 to 65535"),
        ("vllm:65536", "from 1 to 65535"),
        ("vllm:\uff18\uff10\uff10\uff10", "host:port"),  # full-width digits are not a port
    ],
)
def test_a_dns_target_with_a_scheme_a_path_or_an_impossible_port_is_refused(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)) as raised:
        parse_dns_target(value)
    assert "host:port" in str(raised.value)
    assert repr(value) in str(raised.value)
    with pytest.raises(ValueError, match=re.escape(problem)):
        UpstreamPool(VllmSettings(upstreams_dns=value))


async def test_resolve_host_gives_each_address_once_sorted() -> None:
    assert await resolve_host("127.0.0.1", 8000) == ["127.0.0.1"]
    found = await resolve_host("localhost", 8000)
    assert "127.0.0.1" in found
    assert found == sorted(set(found))


async def test_dns_discovery_checks_a_new_address_before_it_takes_traffic_and_forgets_a_gone_one() -> None:
    first, second = Health(), Health(script=deque([503, 503]))
    async with health_server(first) as first_url:
        port = int(first_url.rsplit(":", 1)[1])
        async with health_server(second, host="127.0.0.2", port=port) as second_url:
            dns = ScriptedDns(["127.0.0.1"])
            chosen = VllmSettings(
                upstreams_dns=f"vllm-headless.test:{port}", dns_refresh_s=0.02, healthy_after=2, **FAST
            )
            pool = UpstreamPool(chosen, resolver=dns)
            metrics = Metrics()
            pool.observe(metrics)
            async with started(pool, chosen):
                assert dns.questions[0] == ("vllm-headless.test", port)
                assert pool.report() == {
                    "mode": "dns",
                    "healthy": 1,
                    "total": 1,
                    "upstreams": {first_url: "up"},
                }
                dns.answer = ["127.0.0.2", "127.0.0.1"]
                await until(lambda: second_url in pool.urls)
                assert pool.report()["upstreams"][second_url] == "down"
                await until(lambda: second.checks >= 3 and pool.healthy_count() == 2)
                # Two failed checks, then two passed ones: it joined on the second pass.
                assert metrics.changes(second_url, "up") == 1
                assert metrics.changes(second_url, "down") == 0  # it was never in: it did not leave
                dns.answer = ["127.0.0.2"]
                await until(lambda: pool.urls == [second_url])
                assert metrics.gauge(first_url) is None  # a gone address is forgotten, not down forever
                assert pool.pick("any").url == second_url


@pytest.mark.parametrize(
    "failure",
    [
        socket.gaierror(-3, "Temporary failure in name resolution"),
        # What the real resolver raises for a name with a label over 63 characters: it stopped the checker.
        UnicodeError("encoding with 'idna' codec failed (UnicodeError: label too long)"),
        [],
    ],
)
async def test_a_failed_or_empty_resolution_keeps_the_known_upstreams(failure: Exception | list[str]) -> None:
    async with health_server(Health()) as url:
        port = int(url.rsplit(":", 1)[1])
        dns = ScriptedDns(["127.0.0.1"])
        chosen = VllmSettings(upstreams_dns=f"vllm-headless.test:{port}", dns_refresh_s=0.02, **FAST)
        pool = UpstreamPool(chosen, resolver=dns)
        async with started(pool, chosen):
            dns.answer = failure
            asked = len(dns.questions)
            await until(lambda: len(dns.questions) >= asked + 3)
            assert pool.urls == [url]
            assert pool.healthy_count() == 1


async def test_dns_is_asked_again_only_every_dns_refresh_s() -> None:
    health = Health()
    async with health_server(health) as url:
        port = int(url.rsplit(":", 1)[1])
        dns = ScriptedDns(["127.0.0.1"])
        chosen = VllmSettings(upstreams_dns=f"vllm-headless.test:{port}", dns_refresh_s=30.0, **FAST)
        pool = UpstreamPool(chosen, resolver=dns)
        async with started(pool, chosen):
            await until(lambda: health.checks >= 6)
            assert len(dns.questions) == 1


async def test_an_ipv6_address_becomes_a_bracketed_url() -> None:
    dns = ScriptedDns(["fd00::7", "10.0.0.1"])
    chosen = VllmSettings(upstreams_dns="vllm-headless.test:8000", health_interval_s=60.0)
    pool = UpstreamPool(chosen, resolver=dns)

    async def nobody_answers(_: str) -> bool:
        return False  # these addresses are not on this machine: only the URLs are looked at

    await pool.start(nobody_answers)
    try:
        assert sorted(pool.urls) == ["http://10.0.0.1:8000", "http://[fd00::7]:8000"]
    finally:
        await pool.close()
