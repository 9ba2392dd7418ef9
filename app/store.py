"""The gateway's one Redis connection, and whether Redis can be used right now.

Redis is never in the way of serving. Commands run with a short socket timeout and each call with a deadline
(`call_deadline_s`, however many round trips it makes); the first one that fails marks
Redis down, and from then on every command fails at once (`StoreUnavailable`, no network wait) while a
background probe pings Redis with exponential backoff. The first ping that answers marks it up again. Callers
catch `StoreUnavailable` and degrade: no cache, no counters, last experiment definitions seen, rate limits
open or closed as configured.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from app.metrics import GatewayMetrics
from app.settings import RedisSettings

log = logging.getLogger("twice.store")

T = TypeVar("T")
RedisState = Literal["ok", "degraded", "disabled"]

_FIRST_BACKOFF_S = 0.25


class StoreUnavailable(Exception):
    """Redis is disabled, down, or did not answer in time."""


class RedisStore:
    def __init__(self, settings: RedisSettings, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.prefix = settings.key_prefix
        self.client: aioredis.Redis | None = None
        if settings.enabled:
            self.client = aioredis.Redis.from_url(
                settings.url.get_secret_value(),
                socket_timeout=settings.socket_timeout_s,
                socket_connect_timeout=settings.socket_timeout_s,
                # One try only: a retry would double the time a request waits on a Redis that is down.
                retry=Retry(NoBackoff(), 0),
                decode_responses=True,
            )
        self._up = settings.enabled
        self._probe: asyncio.Task[None] | None = None
        metrics.redis_up.set(1 if settings.enabled else 0)

    @property
    def state(self) -> RedisState:
        if self.client is None:
            return "disabled"
        return "ok" if self._up else "degraded"

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def run(self, command: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run `command` on the client; `StoreUnavailable` at once while Redis is disabled or down."""
        if self.client is None or not self._up:
            raise StoreUnavailable("redis is not available")
        try:
            async with asyncio.timeout(self._settings.call_deadline_s):
                return await command(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.redis_errors.inc()
            if _is_reply_error(exc):
                raise
            self._mark_down(exc)
            raise StoreUnavailable("redis did not answer") from exc

    async def check(self) -> bool:
        """Ping now (at start-up); marks the state either way."""
        if self.client is None:
            return False
        try:
            async with asyncio.timeout(self._settings.call_deadline_s):
                await self.client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.redis_errors.inc()
            self._mark_down(exc)
            return False
        return True

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self.client is not None:
            await self.client.aclose()

    def _mark_down(self, exc: BaseException) -> None:
        if self._up:
            log.warning("redis is down (%s); serving without it until it answers", type(exc).__name__)
        self._up = False
        self._metrics.redis_up.set(0)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        assert self.client is not None
        delay = _FIRST_BACKOFF_S
        while True:
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(self._settings.call_deadline_s):
                    writable = await _takes_writes(self.client)
            except (RedisError, OSError, TimeoutError):
                self._metrics.redis_errors.inc()
                writable = False
            if not writable:
                delay = min(delay * 2, self._settings.max_backoff_s)
                continue
            self._up = True
            self._metrics.redis_up.set(1)
            log.warning("redis answers again")
            return


async def _takes_writes(client: aioredis.Redis) -> bool:
    """Whether Redis answers and is a master: a read-only replica answers PING too, and counting it up would
    mark it down again at the next write, a down/up cycle for as long as a fail-over lasts."""
    await client.ping()
    try:
        role = await client.role()
    except ResponseError:  # ROLE not allowed (an ACL, a managed service): PING is all there is to know
        return True
    first = role[0]
    return bool((first.decode() if isinstance(first, bytes) else first) == "master")


def _is_reply_error(exc: BaseException) -> bool:
    """Redis answered with an error (a bug of ours, a wrong type): it is up, so do not mark it down. A replica
    refusing a write (READONLY, after a fail-over) is no such error: for the gateway, Redis is unavailable."""
    return isinstance(exc, ResponseError) and not isinstance(exc, ReadOnlyError)
