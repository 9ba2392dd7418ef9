"""Response cache, API keys and rate limits end to end: gateways sharing Redis database 13."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import redis

from tests.experiments.support import (
    ADMIN_KEY,
    KEY_ALPHA,
    KEY_BETA,
    MODEL,
    bearer,
    chat,
    flushed,
    gateway_env,
    metric_value,
    two_gateways,
)
from tests.support.servers import running_gateway
from tests.support.vllm_stub import VllmStub

DB = 13
REQUESTS_PER_MINUTE = 5


@pytest.fixture(scope="module")
def gateways(stub_url: str) -> Iterator[tuple[str, str]]:
    flushed(DB)
    env = gateway_env(
        DB, TWICE_CACHE__ENABLED="true", TWICE_LIMITS__REQUESTS_PER_MINUTE=str(REQUESTS_PER_MINUTE)
    )
    with two_gateways(stub_url, env) as pair:
        yield pair


@pytest.fixture
def store() -> Iterator[redis.Redis]:
    client = flushed(DB)
    yield client
    client.close()


def away_from_window_end(store: redis.Redis, margin: int = 8) -> None:
    """Rate windows are whole minutes of Redis's clock: start a count well inside one."""
    seconds = int(store.time()[0]) % 60
    if seconds > 60 - margin:
        time.sleep(60 - seconds + 0.5)


def test_deterministic_requests_are_cached_and_replayed_as_a_stream(
    gateways: tuple[str, str], store: redis.Redis, stub: tuple[str, VllmStub]
) -> None:
    first, second = gateways
    state = stub[1].state
    calls = len(state.received)
    miss = chat(first, temperature=0, content="cache me")
    assert miss.headers["x-twice-cache"] == "miss"
    assert len(state.received) == calls + 1
    hit = chat(second, temperature=0, content="cache me", user="someone-else")
    assert hit.headers["x-twice-cache"] == "hit"
    assert len(state.received) == calls + 1  # the backend was not asked again
    assert hit.json()["choices"][0]["message"]["content"] == miss.json()["choices"][0]["message"]["content"]
    assert hit.json()["id"] != miss.json()["id"]
    assert metric_value(second, "twice_cache_lookups_total", result="hit") >= 1

    client = openai.OpenAI(base_url=f"{second}/v1", api_key=KEY_ALPHA)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "cache me"}],
        max_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == miss.json()["choices"][0]["message"]["content"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == miss.json()["choices"][0][
        "finish_reason"
    ]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == miss.json()["usage"]["total_tokens"]
    assert len(state.received) == calls + 1


def test_what_is_not_deterministic_or_differs_is_not_served_from_cache(
    gateways: tuple[str, str], store: redis.Redis, stub: tuple[str, VllmStub]
) -> None:
    first, _ = gateways
    state = stub[1].state
    skipped = metric_value(first, "twice_cache_lookups_total", result="skipped")
    sampled = chat(first, temperature=0.7, content="sampled")
    assert "x-twice-cache" not in sampled.headers
    assert metric_value(first, "twice_cache_lookups_total", result="skipped") == skipped + 1
    assert chat(first, seed=7, content="seeded").headers["x-twice-cache"] == "miss"
    assert chat(first, seed=7, content="seeded").headers["x-twice-cache"] == "hit"
    assert chat(first, seed=8, content="seeded").headers["x-twice-cache"] == "miss"
    # Another plan is another entry; another tenant (KEY_BETA has the default tenant) too.
    calls = len(state.received)
    planned = chat(
        first, seed=7, content="seeded", headers={"X-Twice-Strategy": "psr", "X-Twice-Rounds": "1"}
    )
    assert planned.headers["x-twice-cache"] == "miss"
    assert len(state.received) > calls
    assert chat(first, key=KEY_BETA, seed=7, content="seeded").headers["x-twice-cache"] == "miss"


def test_api_keys_are_required_and_checked(gateways: tuple[str, str], store: redis.Redis) -> None:
    base = gateways[0]
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    missing = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=10)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.post(f"{base}/v1/chat/completions", json=body, headers=bearer("sk-wrong"), timeout=10)
    assert wrong.status_code == 401
    assert "sk-wrong" not in wrong.text
    assert (
        httpx.post(
            f"{base}/v1/chat/completions", json=body, headers=bearer(ADMIN_KEY), timeout=10
        ).status_code
        == 401
    )
    assert httpx.get(f"{base}/v1/models", timeout=10).status_code == 401
    assert httpx.get(f"{base}/v1/models", headers=bearer(KEY_BETA), timeout=10).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="sk-wrong", max_retries=0).models.list()
    # Keys live only as digests: nothing in Redis names them.
    assert not [k for k in store.keys("*") if KEY_ALPHA in k or KEY_BETA in k]


def test_request_limit_is_shared_by_both_replicas(gateways: tuple[str, str], store: redis.Redis) -> None:
    first, second = gateways
    away_from_window_end(store)
    statuses = [
        chat((first, second)[i % 2], key=KEY_BETA, content=f"n{i}").status_code
        for i in range(REQUESTS_PER_MINUTE)
    ]
    assert statuses == [200] * REQUESTS_PER_MINUTE
    limited = chat(second, key=KEY_BETA, content="one too many")
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert chat(first, key=KEY_BETA, content="still limited").status_code == 429
    # Another key has its own count.
    assert chat(first, key=KEY_ALPHA, content="other key").status_code == 200
    assert (
        metric_value(second, "twice_requests_total", outcome="rate_limited", stream="false", variant="none")
        >= 1
    )


def test_token_limit_refuses_once_the_window_is_spent(stub_url: str) -> None:
    store = flushed(DB)
    away_from_window_end(store)
    env = gateway_env(DB, TWICE_LIMITS__TOKENS_PER_MINUTE="40")
    with running_gateway("--backend", "vllm", "--upstream", stub_url, env=env) as base:
        spent: list[int] = []
        while len(spent) < 20:
            response = chat(base, content=f"tokens {len(spent)}")
            if response.status_code == 429:
                break
            assert response.status_code == 200
            spent.append(response.json()["usage"]["total_tokens"])
        # Each request was admitted while the window had tokens left, and refused once it had none.
        assert sum(spent[:-1]) < 40 <= sum(spent)
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(response.headers["retry-after"]) <= 60
    store.close()


def test_the_cache_keeps_at_most_max_entries_evicting_the_least_recently_used(stub_url: str) -> None:
    store = flushed(DB)
    env = gateway_env(DB, TWICE_CACHE__ENABLED="true", TWICE_CACHE__MAX_ENTRIES="3")
    with running_gateway("--backend", "vllm", "--upstream", stub_url, env=env) as base:

        def cached(name: str) -> str:
            return str(chat(base, temperature=0, content=name).headers["x-twice-cache"])

        assert [cached(name) for name in ("a", "b", "c")] == ["miss"] * 3
        assert cached("a") == "hit"  # a is now the most recently used; b the least
        assert cached("d") == "miss"  # a fourth entry: b is evicted
        assert len(store.keys("twice:cache:*")) == store.zcard("twice:cache-index") == 3
        assert [cached(name) for name in ("a", "c", "d")] == ["hit"] * 3
        assert cached("b") == "miss"  # evicted, so asked again (and it evicts a, now the oldest)
        assert metric_value(base, "twice_cache_evictions_total") == 2
        assert len(store.keys("twice:cache:*")) == 3
    store.close()
