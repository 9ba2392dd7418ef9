"""Chat completions: from a request body to a JSON or SSE response. No route decorators here.

A request whose plan applies no strategy goes to vLLM byte for byte (app/passthrough.py) when the backend is
vllm; every other request runs its plan through `refiners.pipeline.run_plan`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response, StreamingResponse

from app.account import Account
from app.auth import Caller
from app.backends import GatewayBackend
from app.errors import InvalidRequest, NotFound, as_twice_error
from app.fields import extra_fields
from app.gate import Gate
from app.metrics import GatewayMetrics, outcome_of
from app.passthrough import ForwardingBackend, forward_chat
from app.plan import STRATEGY_HEADER, Plan
from app.plan_resolver import PlanResolver, ResolvedPlan, subject_of
from app.protocol.chat import ChatCompletionRequest
from app.render import Ending, Envelope, json_response, render_json, render_stream, stream_response
from app.requests import ChatBody, read_chat_body
from app.responses import twice_extension, usage_info
from app.rounds import NO_ROUNDS, ROUNDS_GRANTED_HEADER, RoundsDecision, RoundsPolicy
from app.settings import Settings
from app.telemetry import Telemetry
from refiners.backend import Sampling
from refiners.base import Conversation, GenerationEvent, Run, Strategy
from refiners.config import RefinerConfig
from refiners.ledger import Ledger
from refiners.pipeline import run_plan

log = logging.getLogger("twice.serving")


class ChatService:
    def __init__(
        self,
        backend: GatewayBackend,
        metrics: GatewayMetrics,
        settings: Settings,
        strategies: Mapping[str, Strategy],
        rounds: RoundsPolicy,
        forwarder: ForwardingBackend | None,
        *,
        plans: PlanResolver,
        gate: Gate,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._plans = plans
        self._gate = gate
        self._backend = backend
        self._metrics = metrics
        self._settings = settings
        self._strategies = strategies
        self._rounds = rounds
        self._telemetry = telemetry
        self._forwarder = forwarder
        self._refiner_config = RefinerConfig(
            psr=settings.psr,
            self_refine=settings.self_refine,
            self_question=settings.self_question,
            role_play=settings.role_play,
            budget=settings.budget,
        )

    async def handle(self, body: bytes, headers: Mapping[str, str], caller: Caller) -> Response:
        """The request's account is opened here and closed once: here for a JSON response or a failure
        (raised on to the one error handler), by the stream itself when it ends."""
        account = Account(self._metrics, self._telemetry)
        try:
            response = await self._respond(body, headers, caller, account)
        except BaseException as exc:
            # A cancelled request (the client went away) is counted too; closing one keeps nothing, so this
            # await does not suspend.
            cancelled = not isinstance(exc, Exception)
            await account.close("cancelled" if cancelled else outcome_of(as_twice_error(exc).status_code))
            raise
        if not isinstance(response, StreamingResponse):
            await account.close(outcome_of(response.status_code))
        return response

    async def _respond(
        self, body: bytes, headers: Mapping[str, str], caller: Caller, account: Account
    ) -> Response:
        chat = read_chat_body(body, self._settings.limits)
        account.stream = chat.stream
        # The plan, once: headers, experiment arm, required strategies. Nothing below changes it.
        resolved = self._plans.resolve(headers, subject_of(chat.user, headers, caller))
        # Limits and cache lookup; the account keeps the answer (cache, results, limits).
        ticket = await self._gate.open(chat, resolved, caller)
        account.variant = resolved.variant
        account.keeper = self._gate.keeper(ticket)
        hit = ticket.hit
        if hit is not None:
            account.cache_hit = True
            response = await self._gate.replay(ticket, hit, chat, account)
        else:
            response = await self._serve(chat, resolved, account)
        response.headers.update(ticket.headers())
        return response

    async def _serve(
        self,
        body: ChatBody,
        resolved: ResolvedPlan,
        account: Account,
    ) -> Response:
        if self._forwarder is not None and not resolved.plan.strategies:
            return await self._pass_through(body, account)
        return await self.create(body, resolved.plan, account, resolved.extension())

    async def check_model(self, model: str) -> None:
        if not await self._backend.serves(model):
            raise NotFound(
                f"The model '{model}' does not exist or is not served here; GET /v1/models lists them.",
                param="model",
                code="model_not_found",
            )

    # --- pass-through --------------------------------------------------------------------------------

    async def _pass_through(self, body: ChatBody, account: Account) -> Response:
        assert self._forwarder is not None
        await self.check_model(body.model)
        envelope = Envelope.new(body.model)
        account.request_id = envelope.request_id
        return await forward_chat(
            self._forwarder, body.raw, stream=body.stream, headers=envelope.headers("none"), account=account
        )

    # --- strategies ----------------------------------------------------------------------------------

    def _conversation(self, request: ChatCompletionRequest, plan: Plan) -> tuple[Conversation, Sampling]:
        if request.n is not None and request.n != 1:
            where = f"X-Twice-Strategy: {plan.applied}" if plan.strategies else "the embedded backend"
            raise InvalidRequest(
                f"n={request.n} cannot be honoured with {where}; only n=1.",
                param="n",
                code="unsupported_value",
            )
        messages = tuple(m.to_chat_message() for m in request.messages)
        if plan.strategies and messages[-1].role == "assistant":
            raise InvalidRequest(
                "Continuing a partial assistant message works only without strategies.",
                param=STRATEGY_HEADER,
                code="unsupported_value",
            )
        if messages[0].role == "assistant" and len(messages) == 1:
            raise InvalidRequest("'messages' needs a system or user message.", param="messages")
        sampling = Sampling(
            max_tokens=request.requested_max_tokens() or self._settings.limits.default_max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            stop=request.stop_sequences(),
            seed=request.seed,
        )
        return messages, sampling

    def _decide_rounds(self, messages: Conversation, plan: Plan, account: Account) -> RoundsDecision:
        if "psr" not in plan.strategies:
            return NO_ROUNDS
        decision = self._rounds.decide(plan.rounds, messages, from_client=plan.client_rounds)
        account.rounds_decided(decision)
        return decision

    def _new_run(
        self,
        messages: Conversation,
        sampling: Sampling,
        plan: Plan,
        rounds: RoundsDecision,
        envelope: Envelope,
        account: Account,
    ) -> Run:
        ledger = Ledger(
            backend=self._backend,
            budget=self._settings.budget,
            tracing=plan.trace,
            observer=account.observer(),
            routing_key=envelope.request_id,
            model=envelope.model,
        )
        return Run(
            messages=messages,
            sampling=sampling,
            config=self._refiner_config,
            ledger=ledger,
            rounds=rounds.granted,
        )

    async def create(
        self,
        body: ChatBody,
        plan: Plan,
        account: Account,
        extension: Mapping[str, Any] | None = None,
    ) -> Response:
        """`extension`: fields added to the `twice` object (the experiment and variant)."""
        request = body.typed()
        await self.check_model(request.model)
        messages, sampling = self._conversation(request, plan)
        extra = extra_fields(request.model_extra or {}, plan.strategies, self._settings.backend)
        envelope = Envelope.new(request.model)
        account.request_id = envelope.request_id
        rounds = self._decide_rounds(messages, plan, account)
        run = self._new_run(messages, sampling, plan, rounds, envelope, account)
        run.extra = extra
        account.run_started(run, plan, rounds)
        source = _FreshAnswer(run, plan, rounds, envelope.request_id, dict(extension or {}), self._strategies)
        headers = envelope.headers(plan.applied)
        if "psr" in plan.strategies:
            headers[ROUNDS_GRANTED_HEADER] = str(run.rounds)
        if body.stream:
            return stream_response(
                render_stream(envelope, source, account, include_usage=body.include_usage), headers
            )
        answer = await render_json(envelope, source, account)
        headers["X-Twice-Rounds-Used"] = str(run.rounds_used)
        return json_response(answer, headers)


@dataclass(frozen=True, slots=True)
class _FreshAnswer:
    """A run as the renderer's source: its events, then its usage and `twice` object."""

    run: Run
    plan: Plan
    rounds: RoundsDecision
    request_id: str
    labels: dict[str, Any]
    strategies: Mapping[str, Strategy]

    def events(self) -> AsyncIterator[GenerationEvent]:
        return run_plan(self.plan.strategies, self.strategies, self.run)

    def ending(self, finished_reason: str | None, visible_tokens: int) -> Ending:
        run = self.run
        return Ending(
            finish_reason=finished_reason or "stop",
            usage=usage_info(run.ledger.usage, visible_tokens),
            twice={**twice_extension(run, self.plan, self.request_id, self.rounds), **self.labels},
        )
