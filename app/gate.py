"""What happens around a chat request before and after the model: limits, experiment, cache, results.

`ChatService.handle` asks `Gate.open` for a `Ticket` (rate limits counted, the plan resolved from the
experiment, the cache looked up), labels the response with it (`X-Twice-Variant`, `X-Twice-Cache`), and gives
the request's account the gate's `keeper`: once the answer is complete, the account hands it over to be stored
in the cache, counted for its variant and spent against the caller's token limit. Every Redis failure here
degrades to serving without Redis.

Plan resolution: the experiment named by `X-Twice-Experiment` (400 if unknown), else the server's default
experiment (ignored with a warning if unknown), else none. An explicit `X-Twice-Strategy` leaves the
experiment only when `allow_override` is on. The subject assigned is the request's `user`, else
`X-Twice-Subject`, else the API key's id, else the client address. A paused experiment serves its control
(first) variant to everyone and counts nothing, so its results compare randomly assigned requests only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from starlette.responses import Response

from app.account import Account, Answered, Keeper
from app.auth import Caller
from app.cache import Replay, ResponseCache, cache_key, cacheable
from app.errors import InvalidRequest
from app.experiments.results import Attribution, Outcome, Results
from app.experiments.spec import assign
from app.experiments.store import ExperimentStore
from app.metrics import NO_VARIANT, GatewayMetrics
from app.plan import STRATEGY_HEADER, Plan, with_required
from app.ratelimit import RateLimiter
from app.render import Envelope, json_response, render_json, render_stream, stream_response
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


class Gate:
    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        store: RedisStore,
        experiments: ExperimentStore,
        results: Results,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self.experiments = experiments
        self._results = results
        self.limiter = RateLimiter(store, settings.limits)
        self.cache = ResponseCache(store, settings.cache, metrics.cache_evictions)
        self._warned: set[str] = set()

    # --- before ----------------------------------------------------------------------------------------

    async def open(
        self, payload: dict[str, Any], body_size: int, headers: Mapping[str, str], plan: Plan, caller: Caller
    ) -> Ticket:
        ticket = Ticket(plan=plan, caller=caller)
        self._resolve(ticket, payload, headers)
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

    async def replay(self, ticket: Ticket, payload: dict[str, Any], account: Account) -> Response:
        """The cached answer, through the same renderer as a fresh one."""
        envelope = Envelope.new(str(payload["model"]))
        account.request_id = envelope.request_id
        headers = envelope.headers(ticket.hit.strategies)
        source = Replay(ticket.hit, envelope.request_id, ticket.extension)
        if payload.get("stream") is True:
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return stream_response(
                render_stream(envelope, source, account, include_usage=include_usage), headers
            )
        return json_response(await render_json(envelope, source, account), headers)

    # --- after -----------------------------------------------------------------------------------------

    def keeper(self, ticket: Ticket) -> Keeper | None:
        """What to do with the request's complete answer, or None when nothing needs it."""
        storing = ticket.cache_result == "miss"
        if storing or ticket.attribution is not None or self.limiter.counts_tokens:
            return partial(self._keep, ticket)
        return None

    async def _keep(self, ticket: Ticket, request_id: str, answer: Answered, latency_s: float) -> None:
        """Cache the answer, count it for its variant, spend its tokens (a cache hit spent none)."""
        tokens = None if ticket.hit is not None else answer.tokens()
        if ticket.cache_result == "miss" and ticket.cache_digest is not None:
            await self.cache.put(ticket.cache_digest, answer, ticket.plan.applied)
        if ticket.attribution is not None and request_id:
            outcome = Outcome(
                finish_reason=answer.finish_reason,
                prompt_tokens=tokens[0] if tokens else None,
                completion_tokens=tokens[1] if tokens else None,
                latency_s=latency_s,
            )
            await self._results.record(request_id, ticket.attribution, ticket.caller.key_id, outcome)
        if tokens:
            await self.limiter.spend(ticket.caller.limit_subject, sum(tokens))
