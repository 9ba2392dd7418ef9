"""The response cache (app/cache.py): what is cacheable, the key, and the bounded store in the real Redis.

The end-to-end behaviour through two gateways (hits replayed as JSON and as a stream, LRU through HTTP) is in
tests/experiments/test_cache_limits_e2e.py. Here the module is driven directly, against Redis on
127.0.0.1:6379 database 0 under a key prefix of each test's own (removed afterwards), so that it shares
nothing with a test run beside it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

from app.account import Answered
from app.cache import CachedAnswer, Replay, ResponseCache, cache_key, cacheable, is_deterministic
from app.metrics import GatewayMetrics
from app.plan import Plan
from app.protocol.chat import UsageInfo
from app.settings import CacheSettings, RedisSettings
from app.store import RedisStore, StoreUnavailable
from refiners.base import TextPiece

PLAIN = Plan(strategies=(), rounds="auto")
PSR = Plan(strategies=("psr",), rounds=2)
USAGE = UsageInfo(prompt_tokens=5, completion_tokens=3, total_tokens=8)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, **fields}


def answer(text: str = "an answer", **overrides: Any) -> Answered:
    fields: dict[str, Any] = {"finish_reason": "stop", "usage": USAGE, **overrides}
    return Answered(text, **fields)


# --- what is cacheable -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "deterministic"),
    [
        ({"temperature": 0}, True),
        ({"temperature": 0.0}, True),
        ({"seed": 7}, True),
        ({"temperature": 0.7, "seed": 0}, True),
        ({"temperature": 0.7}, False),
        ({}, False),  # the backend's default temperature samples
        ({"temperature": False}, False),  # a JSON false is not the number 0
        ({"seed": True}, False),
        ({"seed": "7"}, False),
        ({"seed": 7.0}, False),
        ({"temperature": "0"}, False),
    ],
)
def test_only_a_zero_temperature_or_an_integer_seed_is_deterministic(
    fields: dict[str, Any], deterministic: bool
) -> None:
    assert is_deterministic(fields) is deterministic


def test_a_deterministic_single_answer_within_the_size_bound_is_cacheable() -> None:
    on = CacheSettings(enabled=True, max_entry_bytes=1000)
    assert cacheable(body(), PLAIN, 1000, on)
    assert cacheable(body(n=1), PSR, 10, on)
    assert not cacheable(body(), PLAIN, 1001, on)
    assert not cacheable(body(), PLAIN, 10, CacheSettings(enabled=False))
    assert not cacheable(body(temperature=1), PLAIN, 10, on)


@pytest.mark.parametrize("fields", [{"n": 2}, {"logprobs": True}])
def test_several_choices_or_logprobs_are_not_cacheable(fields: dict[str, Any]) -> None:
    assert not cacheable(body(**fields), PLAIN, 10, CacheSettings(enabled=True))


def test_a_traced_request_is_not_cacheable() -> None:
    traced = Plan(strategies=("psr",), rounds=2, trace=True)
    assert not cacheable(body(), traced, 10, CacheSettings(enabled=True))


# --- the key -----------------------------------------------------------------------------------------------


def test_the_key_ignores_field_order_at_every_depth() -> None:
    first = body(response_format={"type": "json_schema", "schema": {"a": 1, "b": 2}})
    second = dict(
        reversed(list(body(response_format={"schema": {"b": 2, "a": 1}, "type": "json_schema"}).items()))
    )
    assert cache_key(first, PLAIN, "t") == cache_key(second, PLAIN, "t")
    assert len(cache_key(first, PLAIN, "t")) == 64
    int(cache_key(first, PLAIN, "t"), 16)  # hex


def test_delivery_fields_do_not_change_the_key() -> None:
    plain = cache_key(body(), PLAIN, "t")
    delivered = body(stream=True, stream_options={"include_usage": True}, user="someone")
    assert cache_key(delivered, PLAIN, "t") == plain


@pytest.mark.parametrize(
    "changed",
    [
        {"temperature": 0, "seed": 1},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"model": "other"},
        {"max_tokens": 9},
        {"stop": ["x"]},
    ],
)
def test_anything_that_changes_the_answer_changes_the_key(changed: dict[str, Any]) -> None:
    assert cache_key(body(**changed), PLAIN, "t") != cache_key(body(), PLAIN, "t")


def test_the_plan_its_rounds_and_the_tenant_are_part_of_the_key() -> None:
    base = cache_key(body(), PSR, "acme")
    assert cache_key(body(), PLAIN, "acme") != base
    assert cache_key(body(), Plan(strategies=("psr",), rounds=3), "acme") != base
    assert cache_key(body(), PSR, "other") != base
    assert cache_key(body(), Plan(strategies=("psr",), rounds=2), "acme") == base


# --- the entry ---------------------------------------------------------------------------------------------


def test_an_entry_round_trips_and_a_usage_it_cannot_hold_is_unknown() -> None:
    entry = CachedAnswer("text é", "length", USAGE.model_dump(exclude_none=True), "psr")
    again = CachedAnswer.from_json(entry.to_json())
    assert again == entry
    assert again.usage_info() == USAGE
    assert CachedAnswer("t", "stop", {"prompt_tokens": "many"}, "none").usage_info() is None
    assert CachedAnswer("t", "stop", None, "none").usage_info() is None


async def test_a_replay_gives_the_text_in_64_character_slices_and_says_it_is_a_hit() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(150))
    replay = Replay(CachedAnswer(text, "length", None, "none"), "chatcmpl-r", {"variant": "b"})
    pieces = [event async for event in replay.events()]
    assert all(isinstance(piece, TextPiece) for piece in pieces)
    assert [len(piece.text) for piece in pieces if isinstance(piece, TextPiece)] == [64, 64, 22]
    assert "".join(piece.text for piece in pieces if isinstance(piece, TextPiece)) == text
    ending = replay.ending("stop", 99)  # the stored ending wins over what the renderer saw
    assert ending.finish_reason == "length"
    assert ending.usage is None
    assert ending.twice == {"request_id": "chatcmpl-r", "cache": "hit", "variant": "b"}
    assert [event async for event in Replay(CachedAnswer("", "stop", None, "none"), "r", {}).events()] == []


# --- the store, in the real Redis --------------------------------------------------------------------------


class Cache:
    """A `ResponseCache` on the real Redis under a prefix of its own, with its eviction counter."""

    def __init__(self, settings: CacheSettings, redis_settings: RedisSettings | None = None) -> None:
        self.prefix = f"twice-test-cache-{secrets.token_hex(4)}:"
        chosen = redis_settings or RedisSettings(key_prefix=self.prefix)
        self.store = RedisStore(chosen, GatewayMetrics(CollectorRegistry()))
        self.registry = CollectorRegistry()
        self.evictions = Counter("evictions", "cache evictions", registry=self.registry)
        self.cache = ResponseCache(self.store, settings, self.evictions)
        self.redis = redis.Redis(decode_responses=True)

    def evicted(self) -> float:
        return self.registry.get_sample_value("evictions_total") or 0.0

    def entries(self) -> list[str]:
        return sorted(str(key) for key in self.redis.keys(f"{self.prefix}cache:*"))

    async def close(self) -> None:
        keys = self.redis.keys(f"{self.prefix}*")
        if keys:
            self.redis.delete(*keys)
        self.redis.close()
        await self.store.close()


@pytest.fixture
async def bounded() -> AsyncIterator[Cache]:
    cache = Cache(CacheSettings(enabled=True, max_entries=3, ttl_s=60, max_entry_bytes=512))
    yield cache
    await cache.close()


async def test_a_stored_answer_comes_back_with_its_usage_and_strategies(bounded: Cache) -> None:
    assert await bounded.cache.get("k1") is None
    assert await bounded.cache.put("k1", answer("stored"), "psr")
    found = await bounded.cache.get("k1")
    assert found == CachedAnswer("stored", "stop", USAGE.model_dump(exclude_none=True), "psr")
    assert 0 < bounded.redis.ttl(f"{bounded.prefix}cache:k1") <= 60


@pytest.mark.parametrize(
    "stored",
    [b"not json", b"[]", b'{"c": "text"}', b'{"c": 1, "f": "stop", "u": null, "s": "none"}'],
    ids=["not-json", "not-an-object", "fields-missing", "wrong-type"],
)
async def test_an_entry_this_code_cannot_read_is_a_miss_and_is_replaced(
    bounded: Cache, stored: bytes
) -> None:
    """Written by another version, or damaged: the request is answered afresh (it was a 500), and the fresh
    answer takes the entry's place."""
    bounded.redis.set(f"{bounded.prefix}cache:k1", stored)
    assert await bounded.cache.get("k1") is None
    assert await bounded.cache.put("k1", answer("fresh"), "none")
    found = await bounded.cache.get("k1")
    assert found is not None
    assert found.content == "fresh"


@pytest.mark.parametrize(
    "kept",
    [
        answer(complete=False),  # a stream that did not reach its end
        answer(plain=False),  # several choices, or tool calls
        answer(finish_reason=None),
        answer("x" * 600),  # larger than max_entry_bytes once stored
    ],
    ids=["incomplete", "not-plain", "no-finish-reason", "too-large"],
)
async def test_what_cannot_be_replayed_faithfully_is_not_stored(bounded: Cache, kept: Answered) -> None:
    assert not await bounded.cache.put("k", kept, "none")
    assert bounded.entries() == []


async def test_the_least_recently_used_entry_is_evicted_past_max_entries(bounded: Cache) -> None:
    for name in ("a", "b", "c"):
        assert await bounded.cache.put(name, answer(name), "none")
        await asyncio.sleep(0.002)  # distinct millisecond scores in the index
    assert await bounded.cache.get("a") is not None  # a is used: b is now the least recently used
    await asyncio.sleep(0.002)
    assert await bounded.cache.put("d", answer("d"), "none")
    assert [key.rsplit(":", 1)[1] for key in bounded.entries()] == ["a", "c", "d"]
    assert bounded.redis.zcard(bounded.cache.index) == 3
    assert bounded.evicted() == 1
    assert await bounded.cache.get("b") is None


async def test_a_missed_lookup_does_not_enter_the_index(bounded: Cache) -> None:
    assert await bounded.cache.get("never-stored") is None
    assert bounded.redis.zcard(bounded.cache.index) == 0


async def test_storing_the_same_key_again_keeps_one_entry(bounded: Cache) -> None:
    for text in ("first", "second", "third", "fourth"):
        assert await bounded.cache.put("same", answer(text), "none")
    assert bounded.redis.zcard(bounded.cache.index) == 1
    assert bounded.evicted() == 0
    found = await bounded.cache.get("same")
    assert found is not None
    assert found.content == "fourth"


async def test_entries_last_used_a_ttl_ago_leave_the_index_without_counting_as_evictions() -> None:
    cache = Cache(CacheSettings(enabled=True, max_entries=2, ttl_s=1))
    try:
        assert await cache.cache.put("old-1", answer(), "none")
        assert await cache.cache.put("old-2", answer(), "none")
        await asyncio.sleep(1.1)  # both expire in Redis, and their index entries are a TTL old
        assert await cache.cache.put("new", answer(), "none")
        assert cache.redis.zrange(cache.cache.index, 0, -1) == [f"{cache.prefix}cache:new"]
        assert cache.evicted() == 0
    finally:
        await cache.close()


async def test_a_redis_that_is_down_raises_on_lookup_and_stores_nothing() -> None:
    # Port 1 refuses connections at once on loopback: a Redis that is down, without waiting on a timeout.
    down = RedisSettings(url=SecretStr("redis://127.0.0.1:1/0"))
    cache = Cache(CacheSettings(enabled=True), down)
    try:
        with pytest.raises(StoreUnavailable):
            await cache.cache.get("k")
        assert cache.store.state == "degraded"
        assert not await cache.cache.put("k", answer(), "none")
    finally:
        await cache.close()


async def test_with_redis_disabled_there_is_no_cache() -> None:
    cache = Cache(CacheSettings(enabled=True), RedisSettings(enabled=False))
    try:
        with pytest.raises(StoreUnavailable):
            await cache.cache.get("k")
        assert not await cache.cache.put("k", answer(), "none")
    finally:
        await cache.close()
