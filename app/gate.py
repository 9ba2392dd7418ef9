"""What happens around a chat request before and after the model: limits, experiment, cache, results.

`ChatService.handle` asks `Gate.open` for a `Ticket` (rate limits counted, the plan resolved from the
experiment, the cache looked up), serves the request, and hands the response to `Gate.close`, which labels it
(`X-Twice-Variant`, `X-Twice-Cache`) and, once the answer is complete, stores it in the cache, counts it for
its variant and spends its tokens. Every Redis failure here degrades to serving without Redis.

Plan resolution: the experiment named by `X-Twice-Experiment` (400 if unknown), else the server's default
experiment (ignored with a warning if unknown), else none. An explicit `X-Twice-Strategy` leaves the
experiment only when `allow_override` is on. The subject assigned is the request's `user`, else
`X-Twice-Subject`, else the API key's id, else the client address. A paused experiment serves its control
(first) variant to everyone and counts nothing, so its results compare randomly assigned requests only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response, StreamingResponse

from app.auth import Caller, KeyRing
from app.cache import Replay, ResponseCache, cache_key, cacheable
from app.capture import Captured, capture_json, capture_stream
from app.errors import InvalidRequest
from app.experiment_store import ExperimentStore
from app.experiments import assign
from app.metrics import NO_VARIANT, GatewayMetrics, current_variant
from app.plan import STRATEGY_HEADER, Plan, with_required
from app.ratelimit import RateLimiter
from app.render import Ending, Envelope, json_response, render_json, render_stream, stream_response
from app.results import Attribution, Outcome, Results
from app.settings import Settings
from app.store import RedisStore, StoreUnavailable

log = logging.getLogger("twice.gate")

EXPERIMENT_HEADER = "X-Twice-Experiment"
SUBJECT_HEADER = "X-Twice-Subject"
VARIANT_HEADER = "X-Twice-Variant"
CACHE_HEADER = "X-Twice-Cache"


@dataclass
class Ticket:
    plan: Plan
    caller: Caller
    started: float
    experiment: str | None = None
    variant: str = NO_VARIANT
    attribution: Attribution | None = None
    cache_digest: str | None = None
    cache_result: str | None = None
    hit: Any = None
    extension: dict[str, Any] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.experiment is not None:
            headers[VARIANT_HEADER] = self.variant
        if self.cache_result in ("hit", "miss"):
            headers[CACHE_HEADER] = self.cache_result
        return headers


class _Silent:
    """A replay's listener: the gate counted the request already."""

    def first_text(self) -> None:
        return

    def answered(self, text: str, ending: Ending) -> None:
        return

    async def close(self, outcome: str) -> None:
        return


_SILENT = _Silent()


class Gate:
    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.store = RedisStore(settings.redis, metrics)
        self.keys = KeyRing(settings.auth)
        self.experiments = ExperimentStore(self.store, settings.experiments, settings.plan)
        self.results = Results(self.store, settings.experiments.attribution_ttl_s)
        self.limiter = RateLimiter(self.store, settings.limits)
        self.cache = ResponseCache(self.store, settings.cache, metrics.cache_evictions)
        self._warned: set[str] = set()

    async def start(self) -> None:
        if self.store.client is not None:
            await self.store.check()
        await self.experiments.start()

    async def close(self) -> None:
        await self.experiments.close()
        await self.store.close()

    # --- before ----------------------------------------------------------------------------------------

    async def open(
        self, payload: dict[str, Any], body_size: int, headers: Mapping[str, str], plan: Plan, caller: Caller
    ) -> Ticket:
        ticket = Ticket(plan=plan, caller=caller, started=time.perf_counter())
        self._resolve(ticket, payload, headers)
        current_variant.set(ticket.variant)
        await self.limiter.admit(caller.limit_subject)
        if cacheable(payload, ticket.plan, body_size, self._settings.cache):
            await self._look_up(ticket, payload)
        elif self._settings.cache.enabled:
            self._metrics.cache_lookups.labels(result="skipped").inc()
        return ticket

    def _resolve(self, ticket: Ticket, payload: dict[str, Any], headers: Mapping[str, str]) -> None:
        named = headers.get(EXPERIMENT_HEADER.lower())
        name = (named if named is not None else self._settings.experiments.default).strip()
        if not name:
            return
        experiment = self.experiments.get(name)
        if experiment is None:
            if named is not None:
                raise InvalidRequest(
                    f"{EXPERIMENT_HEADER}: unknown experiment {name[:64]!r}.",
                    param=EXPERIMENT_HEADER,
                    code="unknown_experiment",
                )
            if name not in self._warned:
                self._warned.add(name)
                log.warning("default experiment %r is not defined; serving the default plan", name)
            return
        if self._settings.experiments.allow_override and STRATEGY_HEADER.lower() in headers:
            return
        variant = assign(experiment.spec, self._subject(payload, headers, ticket.caller))
        ticket.plan = with_required(
            variant.plan(self._settings.plan.max_rounds, trace=ticket.plan.trace), self._settings.plan
        )
        ticket.experiment, ticket.variant = experiment.name, variant.name
        ticket.extension = {"experiment": experiment.name, "variant": variant.name}
        if not experiment.spec.paused:
            ticket.attribution = Attribution(experiment.name, variant.name)

    @staticmethod
    def _subject(payload: dict[str, Any], headers: Mapping[str, str], caller: Caller) -> str:
        user = payload.get("user")
        # `user` and X-Twice-Subject both name the end user, so the same name lands alike either way.
        if isinstance(user, str) and user:
            return user
        subject = headers.get(SUBJECT_HEADER.lower())
        if subject:
            return subject
        if caller.key_id:
            return "key:" + caller.key_id
        return "addr:" + caller.address

    async def _look_up(self, ticket: Ticket, payload: dict[str, Any]) -> None:
        digest = cache_key(payload, ticket.plan, ticket.caller.tenant)
        try:
            ticket.hit = await self.cache.get(digest)
        except StoreUnavailable:
            self._metrics.cache_lookups.labels(result="skipped").inc()
            return
        ticket.cache_digest = digest
        ticket.cache_result = "hit" if ticket.hit is not None else "miss"
        self._metrics.cache_lookups.labels(result=ticket.cache_result).inc()

    # --- a cached answer -------------------------------------------------------------------------------

    async def replay(self, ticket: Ticket, payload: dict[str, Any]) -> Response:
        envelope = Envelope.new(str(payload["model"]))
        headers = envelope.headers(ticket.hit.strategies)
        source = Replay(ticket.hit, envelope.request_id, ticket.extension)
        stream = payload.get("stream") is True
        self._metrics.requests.labels(outcome="ok", stream="true" if stream else "false").inc()
        if stream:
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return stream_response(
                render_stream(envelope, source, _SILENT, include_usage=include_usage), headers
            )
        return json_response(await render_json(envelope, source, _SILENT), headers)

    # --- after -----------------------------------------------------------------------------------------

    def _needs_capture(self, ticket: Ticket) -> bool:
        storing = ticket.cache_result == "miss"
        return storing or ticket.attribution is not None or self.limiter.counts_tokens

    async def finish(self, ticket: Ticket, response: Response) -> Response:
        """Label the response; once its answer is complete, cache it, count it and spend its tokens."""
        for name, value in ticket.headers().items():
            response.headers[name] = value
        if response.status_code != 200 or not self._needs_capture(ticket):
            return response
        request_id = response.headers.get("x-twice-request-id", "")

        async def done(captured: Captured) -> None:
            await self._account(ticket, request_id, captured)

        if isinstance(response, StreamingResponse):
            response.body_iterator = capture_stream(response.body_iterator, done)
        else:
            await done(capture_json(bytes(response.body)))
        return response

    async def _account(self, ticket: Ticket, request_id: str, captured: Captured) -> None:
        if not captured.complete:
            return
        tokens = None if ticket.hit is not None else captured.tokens()
        if ticket.cache_result == "miss" and ticket.cache_digest is not None:
            await self.cache.put(ticket.cache_digest, captured, ticket.plan.applied)
        if ticket.attribution is not None and request_id:
            outcome = Outcome(
                finish_reason=captured.finish_reason,
                prompt_tokens=tokens[0] if tokens else None,
                completion_tokens=tokens[1] if tokens else None,
                latency_s=time.perf_counter() - ticket.started,
            )
            await self.results.record(request_id, ticket.attribution, ticket.caller.key_id, outcome)
        if tokens:
            await self.limiter.spend(ticket.caller.limit_subject, sum(tokens))
