"""The response cache: exact-match answers to deterministic requests, kept in Redis with a TTL.

A request is cacheable when it is deterministic (temperature 0, or a seed), asks for one choice without
logprobs or a trace, and its body is within `max_entry_bytes`. Its key is the sha256 of a canonical form: the
body as sorted-key JSON without `stream`, `stream_options` and `user` (they change the delivery, not the
answer), plus the resolved plan, the model and the caller's tenant (tenants never see each other's entries).
Only plain text answers that ended normally are stored. A hit is replayed through the one renderer
(app/render.py) as the source of its text events (`Replay`): as JSON, or as the stream a fresh answer is.

The cache is bounded in total: at most `max_entries` entries (each at most `max_entry_bytes`), the least
recently used evicted first. An index (a sorted set of entry keys by last use) is kept beside the entries and
both change in one Lua script, so replicas sharing a Redis keep one bound. The evicted entries' keys are not
declared to the script: Redis Cluster would need the entries and the index in one hash slot.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter
from pydantic import ValidationError

from app.account import Answered
from app.plan import Plan
from app.protocol.chat import UsageInfo
from app.render import Ending
from app.settings import CacheSettings
from app.store import RedisStore, StoreUnavailable
from refiners.base import GenerationEvent, TextPiece

log = logging.getLogger("twice.cache")

_IGNORED_FIELDS = ("stream", "stream_options", "user")
_REPLAY_CHUNK_CHARS = 64

# KEYS: entry, index. ARGV: the entry, its TTL (s), the most entries. Returns how many were evicted.
_PUT = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
-- An entry last used more than a TTL ago has expired: forget it before counting.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms - tonumber(ARGV[2]) * 1000)
redis.call('ZADD', KEYS[2], now_ms, KEYS[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do redis.call('DEL', oldest[i]) end
  return over
end
return 0
"""

# KEYS: entry, index. Returns the entry or nil, marking it used.
_GET = """
local entry = redis.call('GET', KEYS[1])
if entry then
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[2], 'XX', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000), KEYS[1])
end
return entry
"""


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    content: str
    finish_reason: str
    usage: dict[str, Any] | None
    strategies: str

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"c": self.content, "f": self.finish_reason, "u": self.usage, "s": self.strategies}
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> CachedAnswer | None:
        """The entry, or None for one this code cannot read (damaged, or written by another version)."""
        try:
            data = orjson.loads(raw)
            answer = cls(content=data["c"], finish_reason=data["f"], usage=data["u"], strategies=data["s"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        texts = (answer.content, answer.finish_reason, answer.strategies)
        if not all(isinstance(text, str) for text in texts) or not isinstance(answer.usage, dict | None):
            return None
        return answer

    def usage_info(self) -> UsageInfo | None:
        """The usage to replay; None when it was not known (or an older entry holds what it cannot be)."""
        if self.usage is None:
            return None
        try:
            return UsageInfo.model_validate(self.usage)
        except ValidationError:
            return None


def is_deterministic(payload: Mapping[str, Any]) -> bool:
    temperature = payload.get("temperature")
    seed = payload.get("seed")
    zero = isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0
    seeded = isinstance(seed, int) and not isinstance(seed, bool)
    return zero or seeded


def cacheable(payload: Mapping[str, Any], plan: Plan, body_size: int, settings: CacheSettings) -> bool:
    return (
        settings.enabled
        and body_size <= settings.max_entry_bytes
        and not plan.trace
        and payload.get("n") in (None, 1)
        and not payload.get("logprobs")
        and is_deterministic(payload)
    )


def cache_key(payload: Mapping[str, Any], plan: Plan, tenant: str) -> str:
    canonical = {k: v for k, v in payload.items() if k not in _IGNORED_FIELDS}
    material = orjson.dumps(
        {
            "body": canonical,
            "plan": plan.applied,
            "rounds": plan.rounds,
            "model": payload.get("model"),
            "tenant": tenant,
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(material).hexdigest()


class ResponseCache:
    def __init__(self, store: RedisStore, settings: CacheSettings, evictions: Counter) -> None:
        self._store = store
        self._settings = settings
        self._evictions = evictions
        self.index = store.key("cache-index")
        client = store.client
        self._get = client.register_script(_GET) if client is not None else None
        self._put = client.register_script(_PUT) if client is not None else None

    def _key(self, digest: str) -> str:
        return self._store.key("cache", digest)

    async def get(self, digest: str) -> CachedAnswer | None:
        """The cached answer, or None; `StoreUnavailable` while Redis is down."""
        script = self._get
        if script is None:
            raise StoreUnavailable("redis is disabled")
        keys = [self._key(digest), self.index]
        raw = await self._store.run(lambda _: script(keys=keys))
        if raw is None:
            return None
        answer = CachedAnswer.from_json(raw)
        if answer is None:
            log.warning("cache entry %s cannot be read; answering afresh", digest)
        return answer

    async def put(self, digest: str, answer: Answered, strategies: str) -> bool:
        if not (answer.complete and answer.plain and answer.finish_reason):
            return False
        usage = answer.usage.model_dump(exclude_none=True) if answer.usage is not None else None
        entry = CachedAnswer(answer.text, answer.finish_reason, usage, strategies).to_json()
        if len(entry) > self._settings.max_entry_bytes:
            return False
        script = self._put
        if script is None:
            return False
        keys = [self._key(digest), self.index]
        args: list[bytes | int] = [entry, self._settings.ttl_s, self._settings.max_entries]
        try:
            evicted = await self._store.run(lambda _: script(keys=keys, args=args))
        except StoreUnavailable:
            return False
        if evicted:
            self._evictions.inc(int(evicted))
        return True


@dataclass(frozen=True, slots=True)
class Replay:
    """A cached answer as a source of text events for the renderer (app/render.py), in slices of
    `_REPLAY_CHUNK_CHARS` characters, as a stream delivers text."""

    answer: CachedAnswer
    request_id: str
    extension: Mapping[str, Any]

    async def events(self) -> AsyncIterator[GenerationEvent]:
        text = self.answer.content
        for start in range(0, len(text), _REPLAY_CHUNK_CHARS):
            yield TextPiece(text[start : start + _REPLAY_CHUNK_CHARS])

    def ending(self, finished_reason: str | None, visible_tokens: int) -> Ending:
        return Ending(
            finish_reason=self.answer.finish_reason,
            usage=self.answer.usage_info(),
            twice={"request_id": self.request_id, "cache": "hit", **self.extension},
        )
