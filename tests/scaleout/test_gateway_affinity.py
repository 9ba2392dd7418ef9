"""`twice serve` on the vllm backend over two or three loopback vLLM stand-ins (TWICE_VLLM__UPSTREAMS): the
calls of one request stay on one replica, requests spread, a stopped replica's traffic moves and returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx

from tests.scaleout.replicas import Replica, metric_values, replicas
from tests.support.servers import running_gateway

MODEL = "stub-model"
BODY: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Explain how tides work, step by step."}],
    "max_tokens": 24,
}
PSR = {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "4"}


def gateway_env(urls: list[str], **extra: str) -> dict[str, str]:
    return {
        "TWICE_BACKEND": "vllm",
        "TWICE_VLLM__UPSTREAMS": ",".join(urls),
        "TWICE_VLLM__MODEL": MODEL,
        "TWICE_VLLM__HEALTH_INTERVAL_S": "0.1",
        "TWICE_VLLM__UNHEALTHY_AFTER": "2",
        "TWICE_VLLM__HEALTHY_AFTER": "2",
        "TWICE_REDIS__ENABLED": "false",
        "TWICE_PSR__CHUNK_TOKENS": "4",
        **extra,
    }


@contextmanager
def gateway_over(started: list[Replica], **extra: str) -> Iterator[str]:
    with running_gateway(env=gateway_env([r.url for r in started], **extra)) as base:
        yield base


def wait_until(condition: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def healthy(base: str) -> int:
    count: int = httpx.get(f"{base}/ready", timeout=5).json()["upstreams"]["healthy"]
    return count


def test_every_call_of_a_psr_request_reaches_one_replica() -> None:
    with replicas(3) as started, gateway_over(started) as base, httpx.Client(timeout=60) as client:

        def one(_: int) -> httpx.Response:
            return client.post(f"{base}/v1/chat/completions", json=BODY, headers=PSR)

        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(one, range(12)))
        assert [r.status_code for r in responses] == [200] * 12
        ids = [r.headers["x-twice-request-id"] for r in responses]
        for rid in ids:
            holders = [r for r in started if rid in r.routing_keys()]
            assert len(holders) == 1, rid
            assert holders[0].routing_keys().count(rid) >= 4  # generations and verdicts: several calls
        assert sum(1 for r in started if r.calls) >= 2
        # The later calls of each request reuse its prefix on its replica.
        assert all(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0 for r in responses)
        assert metric_values(base, "twice_affinity_breaks_total") == {"": 0.0}
        calls = metric_values(base, "twice_upstream_calls_total")
        for replica in started:
            # Chat calls, plus at most one GET /v1/models (the model list the gateway checks names against).
            assert replica.calls <= calls.get(f'{{upstream="{replica.url}"}}', 0) <= replica.calls + 1


def test_pass_through_requests_spread_over_three_replicas() -> None:
    with replicas(3) as started, gateway_over(started) as base, httpx.Client(timeout=30) as client:
        for _ in range(300):
            assert client.post(f"{base}/v1/chat/completions", json=BODY).status_code == 200
        shares = [r.calls / 300 for r in started]
        assert all(0.20 <= share <= 0.47 for share in shares), shares
        keys = [key for r in started for key in r.routing_keys()]
        assert len(keys) == len(set(keys)) == 300  # a fresh key per pass-through request


def test_the_routing_header_name_is_configurable_and_sent_on_every_call() -> None:
    with (
        replicas(1) as started,
        running_gateway(
            "--backend", "vllm", "--upstream", started[0].url, env={"TWICE_VLLM__ROUTING_HEADER": "X-Session"}
        ) as base,
        httpx.Client(timeout=60) as client,
    ):
        (replica,) = started
        assert client.post(f"{base}/v1/chat/completions", json=BODY).status_code == 200
        assert client.post(f"{base}/v1/chat/completions", json=BODY).status_code == 200
        psr = client.post(f"{base}/v1/chat/completions", json=BODY, headers=PSR)
        assert psr.status_code == 200
        keys = replica.routing_keys("X-Session")
        assert len(keys) == replica.calls
        assert len(set(keys[:2])) == 2
        assert set(keys[2:]) == {psr.headers["x-twice-request-id"]}
        assert replica.routing_keys("X-Twice-Routing-Key") == []


def test_a_stopped_replica_loses_its_traffic_and_regains_it_when_restarted() -> None:
    with replicas(3) as started, gateway_over(started) as base:
        victim = started[0]
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    try:
                        response = client.post(f"{base}/v1/chat/completions", json=BODY)
                        statuses.append(response.status_code)
                    except httpx.HTTPError:
                        statuses.append(0)

        workers = [threading.Thread(target=load) for _ in range(2)]
        for worker in workers:
            worker.start()
        try:
            wait_until(lambda: len(statuses) >= 60)
            victim.stop()
            stopped_at, victim_calls = len(statuses), victim.calls
            wait_until(lambda: healthy(base) == 2)
            wait_until(lambda: len(statuses) >= stopped_at + 150)
            assert victim.calls == victim_calls
            victim.start()
            wait_until(lambda: healthy(base) == 3)
            wait_until(lambda: victim.calls >= victim_calls + 10)
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
        failed = [status for status in statuses if status != 200]
        assert len(failed) <= 2, failed  # at most the one in flight on each load worker
        changes = metric_values(base, "twice_upstream_health_changes_total")
        assert changes[f'{{state="down",upstream="{victim.url}"}}'] == 1.0
        assert changes[f'{{state="up",upstream="{victim.url}"}}'] == 1.0
        assert metric_values(base, "twice_upstream_healthy")[f'{{upstream="{victim.url}"}}'] == 1.0


def test_a_psr_request_whose_replica_stops_mid_way_finishes_on_the_next() -> None:
    with (
        replicas(2, latency_s=0.05) as started,
        gateway_over(started) as base,
        httpx.Client(timeout=60) as client,
    ):
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, f"{base}/v1/chat/completions", json=BODY, headers=PSR)
            wait_until(lambda: any(r.calls for r in started))
            owner = next(r for r in started if r.calls)
            owner.stop()
            response = pending.result()
        assert response.status_code == 200, response.text
        rid = response.headers["x-twice-request-id"]
        other = next(r for r in started if r is not owner)
        assert owner.routing_keys() == [rid] * owner.calls
        assert other.routing_keys().count(rid) >= 2
        assert metric_values(base, "twice_affinity_breaks_total") == {"": 1.0}
        ready = httpx.get(f"{base}/ready", timeout=5).json()
        assert ready["upstreams"]["healthy"] == 1
        assert ready["upstreams"]["upstreams"][owner.url] == "down"


def test_ready_is_unavailable_while_no_replica_is_healthy() -> None:
    with replicas(2) as started, gateway_over(started) as base:
        ready = httpx.get(f"{base}/ready", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["upstreams"]["mode"] == "list"
        for replica in started:
            replica.stop()
        wait_until(lambda: httpx.get(f"{base}/ready", timeout=5).status_code == 503)
        assert healthy(base) == 0
        failed = httpx.post(f"{base}/v1/chat/completions", json=BODY, timeout=30)
        assert failed.status_code in (502, 503)


def test_a_dns_name_gives_the_pool_its_replicas() -> None:
    with replicas(1) as started:
        (replica,) = started
        env = gateway_env([], TWICE_VLLM__UPSTREAMS_DNS=f"localhost:{replica.port}")
        del env["TWICE_VLLM__UPSTREAMS"]
        with running_gateway(env=env) as base:
            pool = httpx.get(f"{base}/ready", timeout=5).json()["upstreams"]
            assert pool["mode"] == "dns"
            # localhost may also resolve to ::1, where the stand-in does not listen: that one stays down.
            assert pool["upstreams"][replica.url] == "up"
            response = httpx.post(f"{base}/v1/chat/completions", json=BODY, timeout=30)
            assert response.status_code == 200
            assert replica.calls == 1
