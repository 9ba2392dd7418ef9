"""The gate (app/gate.py) against the real Redis: rate limits before the cache, the cache looked up or skipped
(and counted so), the ticket's headers, a hit replayed through the one renderer, and the keeper that stores a
miss, records the experiment result and spends the tokens, degrading without Redis.

The limiter, the cache and the results are each tested on their own (tests/app/test_ratelimit.py,
tests/app/test_cache.py, tests/app/experiments/test_results.py); through gateways in
tests/experiments/test_cache_limits_e2e.py. Here the gate is driven directly on Redis 127.0.0.1:6379 database
0, under a key prefix of each test's own (removed afterwards). A Redis that is down is port 1, which refuses
connections at once on loopback.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from starlette.responses import StreamingResponse

from app.account import Account, Answered
from app.auth import Caller
from app.cache import CachedAnswer
from app.errors import LimiterUnavailable, RateLimited
from app.experiments.results import Results
from app.gate import CACHE_HEADER, CacheLookup, Gate, Ticket
from app.metrics import GatewayMetrics
from app.plan import Plan
from app.plan_resolver import Arm, ResolvedPlan
from app.protocol.chat import UsageInfo
from app.ratelimit import WINDOW_S
from app.requests import ChatBody, read_chat_body
from app.settings import CacheSettings, LimitSettings, RedisSettings, Settings
from app.store import RedisStore

DOWN = RedisSettings(url=SecretStr("redis://127.0.0.1:1/0"))
CALLER = Caller(key_id="key-0123456789abcdef", tenant="acme", address="127.0.0.1")
PLAIN = ResolvedPlan(Plan(strategies=(), rounds="auto"))
PSR_ARM = ResolvedPlan(Plan(strategies=("psr",), rounds=2), Arm("exp", "treated", counted=True))
PAUSED_ARM = ResolvedPlan(Plan(strategies=(), rounds="auto"), Arm("exp", "control", counted=False))
USAGE = UsageInfo(prompt_tokens=5, completion_tokens=3, total_tokens=8)
CACHE_ON = CacheSettings(enabled=True, ttl_s=60)


def chat(**fields: Any) -> ChatBody:
    """A deterministic (so cacheable) request unless `fields` say otherwise."""
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, **fields}
    return read_chat_body(orjson.dumps(payload), LimitSettings())


def looked_up(ticket: Ticket) -> str | None:
    """What the cache said, or None when it was not asked."""
    return ticket.cache.result if ticket.cache is not None else None


async def events_of(response: StreamingResponse) -> list[bytes]:
    return [
        chunk.encode() if isinstance(chunk, str) else bytes(chunk) async for chunk in response.body_iterator
    ]


class Gated:
    """A `Gate` on the real Redis under a prefix of its own, with its metrics and a client to look inside."""

    def __init__(
        self,
        *,
        cache: CacheSettings | None = None,
        limits: LimitSettings | None = None,
        redis_settings: RedisSettings | None = None,
    ) -> None:
        self.prefix = f"twice-test-gate-{secrets.token_hex(4)}:"
        settings = Settings(cache=cache or CacheSettings(), limits=limits or LimitSettings())
        self.metrics = GatewayMetrics(CollectorRegistry())
        self.store = RedisStore(redis_settings or RedisSettings(key_prefix=self.prefix), self.metrics)
        self.gate = Gate(settings, self.metrics, self.store, Results(self.store, 600))
        self.redis = redis.Redis(decode_responses=True)

    def lookups(self, result: str) -> float:
        return self.metrics.registry.get_sample_value("twice_cache_lookups_total", {"result": result}) or 0.0

    def keys(self, pattern: str = "*") -> list[str]:
        return sorted(str(key) for key in self.redis.keys(f"{self.prefix}{pattern}"))

    def tokens_spent(self) -> str | None:
        window = int(self.redis.time()[0]) // WINDOW_S
        value = self.redis.get(f"{self.prefix}rl:{CALLER.limit_subject}:t:{window}")
        return None if value is None else str(value)

    def stats(self, variant: str) -> dict[str, str]:
        found = self.redis.hgetall(f"{self.prefix}exp:stats:exp:{variant}")
        return {str(field): str(value) for field, value in found.items()}

    async def keep(self, ticket: Ticket, answer: Answered, request_id: str = "chatcmpl-1") -> None:
        keeper = self.gate.keeper(ticket)
        assert keeper is not None
        await keeper(request_id, answer, 0.5)

    async def close(self) -> None:
        keys = self.keys()
        if keys:
            self.redis.delete(*keys)
        self.redis.close()
        await self.store.close()


@pytest.fixture
async def cached() -> AsyncIterator[Gated]:
    gated = Gated(cache=CACHE_ON)
    yield gated
    await gated.close()


async def inside_a_window(gated: Gated, margin: int = 3) -> None:
    """Wait (at most `margin` s) until Redis's clock is well inside a rate-limit window."""
    seconds = int(gated.redis.time()[0]) % WINDOW_S
    if seconds >= WINDOW_S - margin:
        await asyncio.sleep(WINDOW_S - seconds + 0.2)


# --- before: limits and the cache lookup ------------------------------------------------------------------


async def test_a_miss_is_stored_by_the_keeper_and_the_same_request_then_hits(cached: Gated) -> None:
    first = await cached.gate.open(chat(), PLAIN, CALLER)
    assert looked_up(first) == "miss"
    assert first.hit is None
    assert first.headers() == {CACHE_HEADER: "miss"}
    assert cached.keys("cache:*") == []
    await cached.keep(first, Answered("stored text", "stop", USAGE))
    assert first.cache is not None
    assert cached.keys("cache:*") == [f"{cached.prefix}cache:{first.cache.digest}"]

    # The delivery (a stream) does not change the key: the same question hits.
    second = await cached.gate.open(chat(stream=True), PLAIN, CALLER)
    assert looked_up(second) == "hit"
    assert second.hit == CachedAnswer("stored text", "stop", USAGE.model_dump(exclude_none=True), "none")
    assert second.headers() == {CACHE_HEADER: "hit"}
    assert (cached.lookups("miss"), cached.lookups("hit"), cached.lookups("skipped")) == (1, 1, 0)


async def test_the_entry_keeps_the_strategies_applied_and_belongs_to_the_tenant(cached: Gated) -> None:
    ticket = await cached.gate.open(chat(), PSR_ARM, CALLER)
    await cached.keep(ticket, Answered("checked", "stop", USAGE))
    again = await cached.gate.open(chat(), PSR_ARM, CALLER)
    assert again.hit is not None
    assert again.hit.strategies == "psr"
    assert again.headers() == {"X-Twice-Variant": "treated", CACHE_HEADER: "hit"}
    other_tenant = Caller(key_id="key-fedcba9876543210", tenant="globex", address="127.0.0.1")
    elsewhere = await cached.gate.open(chat(), PSR_ARM, other_tenant)
    assert looked_up(elsewhere) == "miss"
    # Another plan is another key too.
    assert (await cached.gate.open(chat(), PLAIN, CALLER)).hit is None


async def test_a_request_that_is_not_cacheable_skips_the_lookup_and_is_counted_skipped(cached: Gated) -> None:
    ticket = await cached.gate.open(chat(temperature=0.7), PSR_ARM, CALLER)
    assert ticket.cache is None
    assert ticket.headers() == {"X-Twice-Variant": "treated"}  # no X-Twice-Cache: it was not looked up
    assert cached.lookups("skipped") == 1
    assert cached.lookups("miss") == 0


async def test_with_the_cache_off_nothing_is_looked_up_or_counted() -> None:
    gated = Gated()
    try:
        ticket = await gated.gate.open(chat(), PLAIN, CALLER)
        assert ticket.cache is None
        assert ticket.headers() == {}
        assert (gated.lookups("skipped"), gated.lookups("miss"), gated.lookups("hit")) == (0, 0, 0)
        assert gated.gate.keeper(ticket) is None  # nothing to store, record or spend
    finally:
        await gated.close()


async def test_a_request_past_the_rate_limit_is_refused_before_the_cache_is_asked() -> None:
    gated = Gated(cache=CACHE_ON, limits=LimitSettings(requests_per_minute=1))
    try:
        await inside_a_window(gated)
        await gated.gate.open(chat(), PLAIN, CALLER)
        with pytest.raises(RateLimited) as refused:
            await gated.gate.open(chat(), PLAIN, CALLER)
        assert refused.value.status_code == 429
        assert gated.lookups("miss") + gated.lookups("hit") + gated.lookups("skipped") == 1
        # Another caller has a count of its own.
        other = Caller(key_id=None, tenant="acme", address="10.0.0.9")
        assert (await gated.gate.open(chat(), PLAIN, other)).cache is not None
    finally:
        await gated.close()


async def test_while_redis_is_down_the_request_is_served_uncached_and_limits_fail_open() -> None:
    gated = Gated(cache=CACHE_ON, limits=LimitSettings(requests_per_minute=1), redis_settings=DOWN)
    try:
        for _ in range(3):  # past the limit of 1: the limiter cannot count, so it admits
            ticket = await gated.gate.open(chat(), PLAIN, CALLER)
            assert ticket.cache is None
            assert ticket.headers() == {}
        assert gated.lookups("skipped") == 3
        assert gated.store.state == "degraded"
    finally:
        await gated.close()


async def test_while_redis_is_down_limits_that_fail_closed_refuse_with_503() -> None:
    limits = LimitSettings(requests_per_minute=10, fail_open=False)
    gated = Gated(cache=CACHE_ON, limits=limits, redis_settings=DOWN)
    try:
        with pytest.raises(LimiterUnavailable) as refused:
            await gated.gate.open(chat(), PLAIN, CALLER)
        assert refused.value.status_code == 503
        assert refused.value.headers == {"Retry-After": "1"}
        assert gated.lookups("skipped") + gated.lookups("miss") == 0
    finally:
        await gated.close()


# --- after: the keeper ---------------------------------------------------------------------------------


async def test_the_keeper_is_wanted_only_to_store_record_or_spend() -> None:
    gated = Gated(limits=LimitSettings(tokens_per_minute=100))
    plain = Gated()
    try:
        unlooked = Ticket(PLAIN, CALLER)
        assert plain.gate.keeper(unlooked) is None
        assert plain.gate.keeper(Ticket(PAUSED_ARM, CALLER)) is None  # a paused arm counts nothing
        assert plain.gate.keeper(Ticket(PSR_ARM, CALLER)) is not None  # a counted arm is recorded
        assert gated.gate.keeper(unlooked) is not None  # tokens are spent
        hit = CacheLookup("digest", "hit", CachedAnswer("t", "stop", None, "none"))
        assert plain.gate.keeper(Ticket(PLAIN, CALLER, hit)) is None  # a hit is stored already
        assert plain.gate.keeper(Ticket(PLAIN, CALLER, CacheLookup("digest", "miss", None))) is not None
    finally:
        await gated.close()
        await plain.close()


async def test_the_keeper_records_the_outcome_for_the_counted_variant(cached: Gated) -> None:
    ticket = await cached.gate.open(chat(temperature=1), PSR_ARM, CALLER)
    await cached.keep(ticket, Answered("an answer", "content_filter", USAGE), request_id="chatcmpl-r1")
    stats = cached.stats("treated")
    assert (stats["requests"], stats["refusals"], stats["usage_reported"]) == ("1", "1", "1")
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == ("5", "3")
    assert float(stats["latency_sum"]) == pytest.approx(0.5)
    attributed = cached.redis.hgetall(f"{cached.prefix}exp:req:chatcmpl-r1")
    assert attributed == {"e": "exp", "v": "treated", "k": CALLER.key_id}
    assert cached.keys("cache:*") == []  # a sampled request was not looked up, so it is not stored


async def test_an_answer_without_a_request_id_is_not_recorded(cached: Gated) -> None:
    ticket = await cached.gate.open(chat(temperature=1), PSR_ARM, CALLER)
    await cached.keep(ticket, Answered("an answer", "stop", USAGE), request_id="")
    assert cached.stats("treated") == {}
    assert cached.keys("exp:*") == []


async def test_the_keeper_spends_the_answers_tokens_against_the_callers_limit() -> None:
    gated = Gated(limits=LimitSettings(tokens_per_minute=100))
    try:
        await inside_a_window(gated)
        ticket = await gated.gate.open(chat(), PLAIN, CALLER)
        await gated.keep(ticket, Answered("one", "stop", USAGE))
        assert gated.tokens_spent() == "8"
        await gated.keep(ticket, Answered("no usage reported", "stop", None))
        assert gated.tokens_spent() == "8"
    finally:
        await gated.close()


async def test_a_replayed_hit_is_counted_for_its_variant_but_spends_no_tokens() -> None:
    """The whole path of a hit: replayed as a stream through a real account, whose close hands the answer to
    the keeper; the variant counts the request without usage (the backend spent none) and nothing is spent
    or stored again."""
    gated = Gated(cache=CACHE_ON, limits=LimitSettings(tokens_per_minute=100))
    try:
        await inside_a_window(gated)
        miss = await gated.gate.open(chat(), PSR_ARM, CALLER)
        await gated.keep(miss, Answered("x" * 100, "stop", USAGE), request_id="chatcmpl-first")
        assert gated.tokens_spent() == "8"

        body = chat(stream=True, stream_options={"include_usage": True})
        ticket = await gated.gate.open(body, PSR_ARM, CALLER)
        assert ticket.hit is not None
        account = Account(gated.metrics)
        account.stream, account.cache_hit = True, True
        account.keeper = gated.gate.keeper(ticket)
        response = await gated.gate.replay(ticket, ticket.hit, body, account)
        assert isinstance(response, StreamingResponse)
        events = await events_of(response)
        assert events[-1] == b"data: [DONE]\n\n"
        chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "x" * 100
        assert chunks[-1]["usage"] == USAGE.model_dump(exclude_none=True)  # the entry's usage, replayed
        assert chunks[-2]["twice"] == {
            "request_id": account.request_id,
            "cache": "hit",
            "experiment": "exp",
            "variant": "treated",
        }
        assert response.headers["X-Twice-Request-Id"] == account.request_id
        assert response.headers["X-Twice-Strategy-Applied"] == "psr"

        stats = gated.stats("treated")
        assert stats["requests"] == "2"
        assert stats["usage_reported"] == "1"  # the hit reported none: its tokens were not spent again
        assert gated.tokens_spent() == "8"
        assert gated.redis.hget(f"{gated.prefix}exp:req:{account.request_id}", "v") == "treated"
    finally:
        await gated.close()


async def test_a_hit_replayed_as_json_carries_the_cached_answer(cached: Gated) -> None:
    miss = await cached.gate.open(chat(), PLAIN, CALLER)
    await cached.keep(miss, Answered("cached words", "length", None))
    ticket = await cached.gate.open(chat(), PLAIN, CALLER)
    assert ticket.hit is not None
    account = Account(cached.metrics)
    response = await cached.gate.replay(ticket, ticket.hit, chat(), account)
    assert not isinstance(response, StreamingResponse)
    answer = orjson.loads(bytes(response.body))
    assert answer["id"] == account.request_id != ""
    assert answer["choices"][0]["message"]["content"] == "cached words"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert "usage" not in answer  # not known when it was stored
    assert answer["twice"] == {"request_id": account.request_id, "cache": "hit"}
    assert response.headers["X-Twice-Strategy-Applied"] == "none"


async def test_while_redis_is_down_the_keeper_drops_what_it_cannot_keep() -> None:
    limits = LimitSettings(tokens_per_minute=100)
    gated = Gated(cache=CACHE_ON, limits=limits, redis_settings=DOWN)
    try:
        ticket = await gated.gate.open(chat(), PSR_ARM, CALLER)  # limits fail open
        assert gated.store.state == "degraded"
        # A ticket whose lookup missed before Redis went away: storing, recording, spending all fail.
        missed = Ticket(PSR_ARM, CALLER, CacheLookup("digest", "miss", None))
        await gated.keep(missed, Answered("text", "stop", USAGE))
        await gated.keep(ticket, Answered("text", "stop", USAGE))
    finally:
        await gated.close()
