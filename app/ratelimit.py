"""Per-key rate limits in Redis, shared by every replica: requests and tokens per fixed one-minute window.

One Lua script admits a request: it reads Redis's own clock (so replicas with skewed clocks agree on the
window), refuses when the window's token count has reached the limit, and otherwise counts the request and
refuses when that passes the request limit. Tokens are added when the response is done, so a request is
admitted on the tokens used so far and the last one of a window may overshoot. A refusal says when the
window ends (`Retry-After`).

Keys: `rl:<subject>:r:<window>` and `rl:<subject>:t:<window>`, expiring with their window.
"""

from __future__ import annotations

import logging

from app.errors import LimiterUnavailable, RateLimited
from app.settings import LimitSettings
from app.store import RedisStore, StoreUnavailable

log = logging.getLogger("twice.ratelimit")

WINDOW_S = 60

_ADMIT = """
local now = redis.call('TIME')
local window = math.floor(tonumber(now[1]) / ARGV[3])
local retry = ARGV[3] - (tonumber(now[1]) % ARGV[3])
local requests_key = KEYS[1] .. ':r:' .. window
local tokens_key = KEYS[1] .. ':t:' .. window
local token_limit = tonumber(ARGV[2])
if token_limit > 0 and tonumber(redis.call('GET', tokens_key) or '0') >= token_limit then
  return {0, 'tokens', retry}
end
local request_limit = tonumber(ARGV[1])
if request_limit > 0 then
  local count = redis.call('INCR', requests_key)
  if count == 1 then redis.call('EXPIRE', requests_key, ARGV[3] * 2) end
  if count > request_limit then return {0, 'requests', retry} end
end
return {1, '', retry}
"""

_SPEND = """
local now = redis.call('TIME')
local tokens_key = KEYS[1] .. ':t:' .. math.floor(tonumber(now[1]) / ARGV[2])
redis.call('INCRBY', tokens_key, ARGV[1])
redis.call('EXPIRE', tokens_key, ARGV[2] * 2)
return 1
"""


class RateLimiter:
    def __init__(self, store: RedisStore, settings: LimitSettings) -> None:
        self._store = store
        self._settings = settings
        client = store.client
        self._admit = client.register_script(_ADMIT) if client is not None else None
        self._spend = client.register_script(_SPEND) if client is not None else None

    @property
    def enabled(self) -> bool:
        return bool(self._settings.requests_per_minute or self._settings.tokens_per_minute)

    @property
    def counts_tokens(self) -> bool:
        return bool(self._settings.tokens_per_minute)

    async def admit(self, subject: str) -> None:
        """Count one request for `subject`; 429 with Retry-After past a limit (503 if Redis is down and the
        limiter fails closed)."""
        if not self.enabled:
            return
        try:
            if self._admit is None:
                raise StoreUnavailable("redis is disabled")
            script = self._admit
            keys = [self._store.key("rl", subject)]
            args = [self._settings.requests_per_minute, self._settings.tokens_per_minute, WINDOW_S]
            allowed, limit, retry = await self._store.run(lambda _: script(keys=keys, args=args))
        except StoreUnavailable:
            if self._settings.fail_open:
                return
            raise LimiterUnavailable(
                "Rate limits cannot be checked right now; try again shortly.", headers={"Retry-After": "1"}
            ) from None
        if not int(allowed):
            per_minute = (
                self._settings.requests_per_minute
                if limit == "requests"
                else self._settings.tokens_per_minute
            )
            raise RateLimited(
                f"Rate limit reached: {per_minute} {limit} per minute. Try again in {int(retry)} s.",
                headers={"Retry-After": str(max(1, int(retry)))},
            )

    async def spend(self, subject: str, tokens: int) -> None:
        """Add a finished request's tokens to `subject`'s window (skipped while Redis is down)."""
        if not self.counts_tokens or tokens <= 0 or self._spend is None:
            return
        script = self._spend
        keys = [self._store.key("rl", subject)]
        try:
            await self._store.run(lambda _: script(keys=keys, args=[tokens, WINDOW_S]))
        except StoreUnavailable:
            log.debug("redis down: %d tokens not counted", tokens)
