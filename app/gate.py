"""What happens around a chat request before and after the model: rate limits, cache, results.

`ChatService.handle` resolves the request's plan once (app/plan_resolver.py), then asks `Gate.open` for a
`Ticket` (rate limits counted, the cache looked up), labels the response with it (`X-Twice-Variant`,
`X-Twice-Cache`), and gives the request's account the gate's `keeper`: once the answer is complete, the
account hands it over to be stored in the cache, counted for its variant and spent against the caller's token
limit.
Every Redis failure here degrades to serving without Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

from starlette.responses import Response

from app.account import Account, Answered, Keeper
from app.auth import Caller
from app.cache import CachedAnswer, Replay, ResponseCache, cache_key, cacheable
from app.experiments.results import Outcome, Results
from app.metrics import GatewayMetrics
from app.plan_resolver import ResolvedPlan
from app.ratelimit import RateLimiter
from app.render import Envelope, json_response, render_json, render_stream, stream_response
from app.requests import ChatBody
from app.settings import Settings
from app.store import RedisStore, StoreUnavailable

CACHE_HEADER = "X-Twice-Cache"


@dataclass(frozen=True, slots=True)
class CacheLookup:
    digest: str
    result: Literal["hit", "miss"]
    hit: CachedAnswer | None


@dataclass(frozen=True, slots=True)
class Ticket:
    """A request admitted: its resolved plan, its caller and what the cache said (None: not looked up)."""

    resolved: ResolvedPlan
    caller: Caller
    cache: CacheLookup | None = None

    @property
    def hit(self) -> CachedAnswer | None:
        return self.cache.hit if self.cache is not None else None

    def headers(self) -> dict[str, str]:
        headers = self.resolved.headers()
        if self.cache is not None:
            headers[CACHE_HEADER] = self.cache.result
        return headers


class Gate:
    def __init__(
        self, settings: Settings, metrics: GatewayMetrics, store: RedisStore, results: Results
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._results = results
        self.limiter = RateLimiter(store, settings.limits)
        self.cache = ResponseCache(store, settings.cache, metrics.cache_evictions)

    # --- before ----------------------------------------------------------------------------------------

    async def open(self, body: ChatBody, resolved: ResolvedPlan, caller: Caller) -> Ticket:
        await self.limiter.admit(caller.limit_subject)
        lookup: CacheLookup | None = None
        if cacheable(body.payload, resolved.plan, len(body.raw), self._settings.cache):
            lookup = await self._look_up(body, resolved, caller)
        elif self._settings.cache.enabled:
            self._metrics.cache_lookups.labels(result="skipped").inc()
        return Ticket(resolved, caller, lookup)

    async def _look_up(self, body: ChatBody, resolved: ResolvedPlan, caller: Caller) -> CacheLookup | None:
        digest = cache_key(body.payload, resolved.plan, caller.tenant)
        try:
            hit = await self.cache.get(digest)
        except StoreUnavailable:
            self._metrics.cache_lookups.labels(result="skipped").inc()
            return None
        lookup = CacheLookup(digest, "hit" if hit is not None else "miss", hit)
        self._metrics.cache_lookups.labels(result=lookup.result).inc()
        return lookup

    # --- a cached answer -------------------------------------------------------------------------------

    async def replay(self, ticket: Ticket, hit: CachedAnswer, body: ChatBody, account: Account) -> Response:
        """The cached answer, through the same renderer as a fresh one."""
        envelope = Envelope.new(body.model)
        account.request_id = envelope.request_id
        headers = envelope.headers(hit.strategies)
        source = Replay(hit, envelope.request_id, ticket.resolved.extension())
        if body.stream:
            return stream_response(
                render_stream(envelope, source, account, include_usage=body.include_usage), headers
            )
        return json_response(await render_json(envelope, source, account), headers)

    # --- after -----------------------------------------------------------------------------------------

    def keeper(self, ticket: Ticket) -> Keeper | None:
        """What to do with the request's complete answer, or None when nothing needs it."""
        storing = ticket.cache is not None and ticket.cache.result == "miss"
        if storing or ticket.resolved.attribution is not None or self.limiter.counts_tokens:
            return partial(self._keep, ticket)
        return None

    async def _keep(self, ticket: Ticket, request_id: str, answer: Answered, latency_s: float) -> None:
        """Cache the answer, count it for its variant, spend its tokens (a cache hit spent none)."""
        tokens = None if ticket.hit is not None else answer.tokens()
        if ticket.cache is not None and ticket.cache.result == "miss":
            await self.cache.put(ticket.cache.digest, answer, ticket.resolved.plan.applied)
        attribution = ticket.resolved.attribution
        if attribution is not None and request_id:
            outcome = Outcome(
                finish_reason=answer.finish_reason,
                prompt_tokens=tokens[0] if tokens else None,
                completion_tokens=tokens[1] if tokens else None,
                latency_s=latency_s,
            )
            await self._results.record(request_id, attribution, ticket.caller.key_id, outcome)
        if tokens:
            await self.limiter.spend(ticket.caller.limit_subject, sum(tokens))
