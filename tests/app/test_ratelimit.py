"""Per-key rate limits (app/ratelimit.py) against the real Redis: window keys, counts, refusals, Retry-After,
and the degraded modes. Two gateways sharing one limit are in tests/experiments/test_cache_limits_e2e.py.

Redis on 127.0.0.1:6379 database 0, under a key prefix of each test's own (removed afterwards). A Redis that
is down is port 1, which refuses connections at once on loopback.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import redis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from app.errors import LimiterUnavailable, RateLimited
from app.metrics import GatewayMetrics
from app.ratelimit import WINDOW_S, RateLimiter
from app.settings import LimitSettings, RedisSettings
from app.store import RedisStore

DOWN = RedisSettings(url=SecretStr("redis://127.0.0.1:1/0"))


class Limits:
    def __init__(self, limits: LimitSettings, redis_settings: RedisSettings | None = None) -> None:
        self.prefix = f"twice-test-rl-{secrets.token_hex(4)}:"
        chosen = redis_settings or RedisSettings(key_prefix=self.prefix)
        self.store = RedisStore(chosen, GatewayMetrics(CollectorRegistry()))
        self.limiter = RateLimiter(self.store, limits)
        self.redis = redis.Redis(decode_responses=True)

    def window(self) -> int:
        return int(self.redis.time()[0]) // WINDOW_S

    def keys(self) -> list[str]:
        return sorted(str(key) for key in self.redis.keys(f"{self.prefix}*"))

    async def close(self) -> None:
        keys = self.keys()
        if keys:
            self.redis.delete(*keys)
        self.redis.close()
        await self.store.close()


async def inside_a_window(limits: Limits, margin: int = 3) -> int:
    """Wait (at most `margin` s) until Redis's clock is well inside a window; that window's number."""
    seconds = int(limits.redis.time()[0]) % WINDOW_S
    if seconds >= WINDOW_S - margin:
        await asyncio.sleep(WINDOW_S - seconds + 0.2)
    return limits.window()


@pytest.fixture
async def two_a_minute() -> AsyncIterator[Limits]:
    limits = Limits(LimitSettings(requests_per_minute=2))
    yield limits
    await limits.close()


async def test_requests_past_the_limit_are_refused_until_the_window_ends(two_a_minute: Limits) -> None:
    window = await inside_a_window(two_a_minute)
    await two_a_minute.limiter.admit("key-a")
    await two_a_minute.limiter.admit("key-a")
    with pytest.raises(RateLimited, match="2 requests per minute") as refused:
        await two_a_minute.limiter.admit("key-a")
    assert refused.value.status_code == 429
    seconds_left = WINDOW_S - int(two_a_minute.redis.time()[0]) % WINDOW_S
    assert abs(int(refused.value.headers["Retry-After"]) - seconds_left) <= 1
    assert f"Try again in {refused.value.headers['Retry-After']} s" in refused.value.message
    key = f"{two_a_minute.prefix}rl:key-a:r:{window}"
    assert two_a_minute.keys() == [key]
    # A refused request is still counted: hammering does not reopen the window.
    assert two_a_minute.redis.get(key) == "3"
    assert WINDOW_S < two_a_minute.redis.ttl(key) <= 2 * WINDOW_S


async def test_each_subject_has_its_own_count(two_a_minute: Limits) -> None:
    await inside_a_window(two_a_minute)
    for _ in range(2):
        await two_a_minute.limiter.admit("key-a")
    await two_a_minute.limiter.admit("key-b")
    with pytest.raises(RateLimited):
        await two_a_minute.limiter.admit("key-a")
    await two_a_minute.limiter.admit("key-b")


async def test_the_next_window_starts_a_new_count(two_a_minute: Limits) -> None:
    """The window is Redis's clock divided by 60: a count kept under the previous window's number is not
    this window's (written directly, rather than waiting a minute)."""
    window = await inside_a_window(two_a_minute)
    two_a_minute.redis.set(f"{two_a_minute.prefix}rl:key-a:r:{window - 1}", 99, ex=60)
    await two_a_minute.limiter.admit("key-a")
    two_a_minute.redis.set(f"{two_a_minute.prefix}rl:key-a:r:{window}", 2, ex=60)
    with pytest.raises(RateLimited):
        await two_a_minute.limiter.admit("key-a")


async def test_tokens_spent_in_the_window_refuse_the_next_request_without_counting_it() -> None:
    limits = Limits(LimitSettings(requests_per_minute=100, tokens_per_minute=50))
    try:
        window = await inside_a_window(limits)
        await limits.limiter.admit("key-t")
        await limits.limiter.spend("key-t", 30)
        await limits.limiter.admit("key-t")  # 30 of 50 spent: admitted
        await limits.limiter.spend("key-t", 25)  # the last one of a window may overshoot
        tokens_key = f"{limits.prefix}rl:key-t:t:{window}"
        assert limits.redis.get(tokens_key) == "55"
        assert WINDOW_S < limits.redis.ttl(tokens_key) <= 2 * WINDOW_S
        with pytest.raises(RateLimited, match="50 tokens per minute") as refused:
            await limits.limiter.admit("key-t")
        assert 1 <= int(refused.value.headers["Retry-After"]) <= WINDOW_S
        assert limits.redis.get(f"{limits.prefix}rl:key-t:r:{window}") == "2"
    finally:
        await limits.close()


async def test_a_token_limit_alone_counts_no_requests() -> None:
    limits = Limits(LimitSettings(tokens_per_minute=10))
    try:
        window = await inside_a_window(limits)
        assert limits.limiter.enabled
        for _ in range(5):
            await limits.limiter.admit("key-t")
        assert limits.keys() == []
        await limits.limiter.spend("key-t", 10)
        assert limits.keys() == [f"{limits.prefix}rl:key-t:t:{window}"]
        with pytest.raises(RateLimited):
            await limits.limiter.admit("key-t")
    finally:
        await limits.close()


async def test_nothing_is_counted_while_limits_are_off_or_tokens_are_not_limited(
    two_a_minute: Limits,
) -> None:
    off = Limits(LimitSettings())
    try:
        assert not off.limiter.enabled
        for _ in range(5):
            await off.limiter.admit("key-a")
        await off.limiter.spend("key-a", 100)
        assert off.keys() == []
    finally:
        await off.close()
    assert not two_a_minute.limiter.counts_tokens
    await two_a_minute.limiter.spend("key-a", 100)
    assert two_a_minute.keys() == []


async def test_no_tokens_spent_writes_nothing() -> None:
    limits = Limits(LimitSettings(tokens_per_minute=10))
    try:
        await limits.limiter.spend("key-t", 0)
        await limits.limiter.spend("key-t", -5)
        assert limits.keys() == []
    finally:
        await limits.close()


@pytest.mark.parametrize("redis_settings", [DOWN, RedisSettings(enabled=False)], ids=["down", "disabled"])
async def test_without_redis_a_failing_open_limiter_admits_everything(redis_settings: RedisSettings) -> None:
    limits = Limits(LimitSettings(requests_per_minute=1, tokens_per_minute=1), redis_settings)
    try:
        for _ in range(3):
            await limits.limiter.admit("key-a")
        await limits.limiter.spend("key-a", 100)  # not counted, and no error
    finally:
        await limits.close()


@pytest.mark.parametrize("redis_settings", [DOWN, RedisSettings(enabled=False)], ids=["down", "disabled"])
async def test_without_redis_a_failing_closed_limiter_answers_503_retry_in_a_second(
    redis_settings: RedisSettings,
) -> None:
    limits = Limits(LimitSettings(requests_per_minute=1, fail_open=False), redis_settings)
    try:
        with pytest.raises(LimiterUnavailable) as refused:
            await limits.limiter.admit("key-a")
        assert refused.value.status_code == 503
        assert refused.value.headers == {"Retry-After": "1"}
    finally:
        await limits.close()


async def test_a_failing_closed_limiter_with_limits_off_admits_without_redis() -> None:
    limits = Limits(LimitSettings(fail_open=False), DOWN)
    try:
        await limits.limiter.admit("key-a")
    finally:
        await limits.close()
