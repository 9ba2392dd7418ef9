"""Redis going away and coming back under a running gateway: a redis-server of the test's own, stopped and
restarted mid-run. Nothing is lost; /ready says degraded, then ok; the seed file is written again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from tests.experiments.support import OwnRedis, chat, gateway_env, metric_value
from tests.support.polling import eventually
from tests.support.servers import running_gateway

PSR = {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "2"}
SEED = [
    {
        "name": "seeded",
        "variants": [
            {"name": "left", "weight": 1, "strategies": "none"},
            {"name": "right", "weight": 1, "strategies": "none"},
        ],
    }
]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def redis_state(base: str) -> str | None:
    response = httpx.get(f"{base}/ready", timeout=5)
    assert response.status_code == 200  # the backend decides readiness, not Redis
    state: str = response.json()["redis"]
    return state


def test_gateway_serves_through_a_redis_outage(own_redis: OwnRedis, stub_url: str, tmp_path: Path) -> None:
    seed_file = tmp_path / "experiments.json"
    seed_file.write_bytes(orjson.dumps(SEED))
    env = gateway_env(
        0,
        port=own_redis.port,
        TWICE_EXPERIMENTS__SEED_FILE=str(seed_file),
        TWICE_EXPERIMENTS__DEFAULT="seeded",
        TWICE_CACHE__ENABLED="true",
        TWICE_LIMITS__REQUESTS_PER_MINUTE="1000",
        TWICE_EXPERIMENTS__ALLOW_OVERRIDE="true",  # so that the psr requests below leave the experiment
    )
    client = redis.Redis(port=own_redis.port, decode_responses=True)
    with running_gateway("--backend", "vllm", "--upstream", stub_url, env=env) as base:
        assert client.hget("twice:exp:seq", "seeded") == "1"
        assert redis_state(base) == "ok"
        assert metric_value(base, "twice_redis_up") == 1
        before = [chat(base, temperature=0, content=f"before {i}") for i in range(3)]
        variants = {r.headers["x-twice-variant"] for r in before}
        assert chat(base, headers=PSR, content="checked before").status_code == 200
        eventually(lambda: client.xlen("twice:telemetry") == 1)  # written in the background
        assert metric_value(base, "twice_telemetry_entries_total", result="written") == 1

        own_redis.stop()
        during = []
        for i in range(12):
            started = time.monotonic()
            during.append(chat(base, temperature=0, content=f"during {i}"))
            assert time.monotonic() - started < 2.0
        assert [r.status_code for r in during] == [200] * 12
        # Experiments keep the definitions last seen; the cache is skipped.
        assert all(r.headers["x-twice-variant"] in ("left", "right") for r in during)
        assert all("x-twice-cache" not in r.headers for r in during)
        assert redis_state(base) == "degraded"
        assert metric_value(base, "twice_redis_up") == 0
        assert metric_value(base, "twice_redis_errors_total") >= 1
        assert metric_value(base, "twice_cache_lookups_total", result="skipped") >= 12
        # A psr request loses its telemetry entry, not its answer.
        assert chat(base, headers=PSR, content="checked during").status_code == 200
        eventually(lambda: metric_value(base, "twice_telemetry_entries_total", result="dropped") == 1)

        own_redis.start()
        _, seconds = eventually(lambda: redis_state(base) == "ok", timeout=10)
        assert seconds < 8
        assert metric_value(base, "twice_redis_up") == 1
        # The restarted Redis came back empty: the gateway writes its seed again.
        eventually(lambda: client.hget("twice:exp:seq", "seeded") == "1", timeout=5)
        after = [chat(base, temperature=0, content="after") for _ in range(2)]
        assert [r.status_code for r in after] == [200, 200]
        assert [r.headers["x-twice-cache"] for r in after] == ["miss", "hit"]
        assert variants <= {"left", "right"}
    client.close()


def test_redis_disabled_is_reported_and_admin_refuses(stub_url: str) -> None:
    env = gateway_env(
        14,
        TWICE_REDIS__ENABLED="false",
        TWICE_LIMITS__REQUESTS_PER_MINUTE="1",
        TWICE_LIMITS__FAIL_OPEN="false",
    )
    with running_gateway("--backend", "vllm", "--upstream", stub_url, env=env) as base:
        assert redis_state(base) == "disabled"
        # Fail closed: without Redis the limiter cannot count, so it refuses (503) rather than admit.
        refused = chat(base)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "rate_limiter_unavailable"
        listing = httpx.post(
            f"{base}/admin/experiments",
            json=SEED[0],
            headers={"Authorization": "Bearer admin-secret-test"},
            timeout=5,
        )
        assert listing.status_code == 503
