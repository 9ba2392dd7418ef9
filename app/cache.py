"""The response cache: exact-match answers to deterministic requests, kept in Redis with a TTL.

A request is cacheable when it is deterministic (temperature 0, or a seed), asks for one choice without
logprobs or a trace, and its body is within `max_entry_bytes`. Its key is the sha256 of a canonical form: the
body as sorted-key JSON without `stream`, `stream_options` and `user` (they change the delivery, not the
answer), plus the resolved plan, the model and the caller's tenant (tenants never see each other's entries).
Only plain text answers that ended normally are stored. A hit is replayed as JSON or, when the request
streams, as a well-formed SSE stream: a role chunk, content chunks, the final chunk, usage when asked, [DONE].
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from app.capture import Captured
from app.plan import Plan
from app.responses import RequestContext
from app.settings import CacheSettings
from app.store import RedisStore, StoreUnavailable
from app.streaming import DONE, sse_event

_IGNORED_FIELDS = ("stream", "stream_options", "user")
_REPLAY_CHUNK_CHARS = 64


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
    def from_json(cls, raw: str | bytes) -> CachedAnswer:
        data = orjson.loads(raw)
        return cls(content=data["c"], finish_reason=data["f"], usage=data["u"], strategies=data["s"])


def is_deterministic(payload: dict[str, Any]) -> bool:
    temperature = payload.get("temperature")
    seed = payload.get("seed")
    zero = isinstance(temperature, int | float) and not isinstance(temperature, bool) and temperature == 0
    seeded = isinstance(seed, int) and not isinstance(seed, bool)
    return zero or seeded


def cacheable(payload: dict[str, Any], plan: Plan, body_size: int, settings: CacheSettings) -> bool:
    return (
        settings.enabled
        and body_size <= settings.max_entry_bytes
        and not plan.trace
        and payload.get("n") in (None, 1)
        and not payload.get("logprobs")
        and is_deterministic(payload)
    )


def cache_key(payload: dict[str, Any], plan: Plan, tenant: str) -> str:
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
    def __init__(self, store: RedisStore, settings: CacheSettings) -> None:
        self._store = store
        self._settings = settings

    def _key(self, digest: str) -> str:
        return self._store.key("cache", digest)

    async def get(self, digest: str) -> CachedAnswer | None:
        """The cached answer, or None; `StoreUnavailable` while Redis is down."""
        raw = await self._store.run(lambda r: r.get(self._key(digest)))
        return CachedAnswer.from_json(raw) if raw is not None else None

    async def put(self, digest: str, captured: Captured, strategies: str) -> bool:
        if not (captured.complete and captured.plain and captured.finish_reason):
            return False
        entry = CachedAnswer(captured.content, captured.finish_reason, captured.usage, strategies).to_json()
        if len(entry) > self._settings.max_entry_bytes:
            return False
        try:
            await self._store.run(lambda r: r.set(self._key(digest), entry, ex=self._settings.ttl_s))
        except StoreUnavailable:
            return False
        return True


def replay_json(answer: CachedAnswer, ctx: RequestContext, extension: dict[str, Any]) -> bytes:
    body: dict[str, Any] = {
        "id": ctx.request_id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.content},
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "twice": {"request_id": ctx.request_id, "cache": "hit", **extension},
    }
    if answer.usage is not None:
        body["usage"] = answer.usage
    return orjson.dumps(body)


async def replay_stream(
    answer: CachedAnswer, ctx: RequestContext, extension: dict[str, Any], include_usage: bool
) -> AsyncIterator[bytes]:
    yield ctx.chunk({"role": "assistant", "content": ""})
    text = answer.content
    for start in range(0, len(text), _REPLAY_CHUNK_CHARS):
        yield ctx.chunk({"content": text[start : start + _REPLAY_CHUNK_CHARS]})
    yield ctx.chunk(
        {}, answer.finish_reason, twice={"request_id": ctx.request_id, "cache": "hit", **extension}
    )
    if include_usage and answer.usage is not None:
        yield _usage_chunk(ctx, answer.usage)
    yield DONE


def _usage_chunk(ctx: RequestContext, usage: dict[str, Any]) -> bytes:
    return sse_event(
        {
            "id": ctx.request_id,
            "object": "chat.completion.chunk",
            "created": ctx.created,
            "model": ctx.model,
            "choices": [],
            "usage": usage,
        }
    )
