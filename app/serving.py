"""Chat completions: from a request body to a JSON or SSE response. No route decorators here.

A request whose plan applies no strategy goes to vLLM byte for byte (app/passthrough.py) when the backend is
vllm; every other request runs its plan through `refiners.pipeline.run_plan`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response, StreamingResponse

from app.auth import Caller
from app.backends import GatewayBackend
from app.errors import InvalidRequest, NotFound, as_twice_error
from app.fields import extra_fields
from app.gate import Gate
from app.metrics import GatewayMetrics, MetricsObserver, outcome_of, variant
from app.passthrough import ForwardingBackend, forward_chat
from app.plan import STRATEGY_HEADER, Plan, parse_plan
from app.protocol.chat import ChatCompletionRequest
from app.render import Ending, Envelope, json_response, render_json, render_stream, stream_response
from app.requests import check_limits, load_json_object, parse_chat_request
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
        forwarder: ForwardingBackend | None = None,
        gate: Gate | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._gate = gate
        self._backend = backend
        self._metrics = metrics
        self._observer = MetricsObserver(metrics)
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

    async def handle(self, body: bytes, headers: Mapping[str, str], caller: Caller | None = None) -> Response:
        """Every outcome is counted here, errors included (they are raised on to the one error handler)."""
        stream = "false"
        try:
            payload = load_json_object(body)
            check_limits(payload, self._settings.limits)
            stream = "true" if payload.get("stream") is True else "false"
            plan = parse_plan(headers, self._settings.plan)
            if self._gate is None or caller is None:
                return await self._serve(payload, body, plan, stream=stream == "true")
            # Limits, experiment arm and cache lookup; then labels, caching and results on the way out.
            ticket = await self._gate.open(payload, len(body), headers, plan, caller)
            if ticket.hit is not None:
                response = await self._gate.replay(ticket, payload)
            else:
                response = await self._serve(
                    payload, body, ticket.plan, stream=stream == "true", extension=ticket.extension
                )
            return await self._gate.finish(ticket, response)
        except Exception as exc:
            self._metrics.requests.labels(
                outcome=outcome_of(as_twice_error(exc).status_code), stream=stream
            ).inc()
            raise

    async def _serve(
        self,
        payload: dict[str, Any],
        body: bytes,
        plan: Plan,
        *,
        stream: bool,
        extension: Mapping[str, Any] | None = None,
    ) -> Response:
        if self._forwarder is not None and not plan.strategies:
            return await self._pass_through(payload, body, stream=stream)
        return await self.create(parse_chat_request(payload), plan, extension)

    async def check_model(self, model: str) -> None:
        if not await self._backend.serves(model):
            raise NotFound(
                f"The model '{model}' does not exist or is not served here; GET /v1/models lists them.",
                param="model",
                code="model_not_found",
            )

    # --- pass-through --------------------------------------------------------------------------------

    async def _pass_through(self, payload: dict[str, Any], body: bytes, *, stream: bool) -> Response:
        assert self._forwarder is not None
        await self.check_model(payload["model"])
        started = time.perf_counter()
        headers = Envelope.new(payload["model"]).headers("none")
        response = await forward_chat(
            self._forwarder, body, stream=stream, headers=headers, metrics=self._metrics, started=started
        )
        if not isinstance(response, StreamingResponse):
            self._observe(started, "false", outcome_of(response.status_code))
        return response

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

    def _decide_rounds(self, messages: Conversation, plan: Plan) -> RoundsDecision:
        if "psr" not in plan.strategies:
            return NO_ROUNDS
        decision = self._rounds.decide(plan.rounds, messages, from_client=plan.client_rounds)
        self._metrics.rounds_granted.labels(source=decision.source, variant=variant()).observe(
            decision.granted
        )
        return decision

    def _new_run(
        self,
        messages: Conversation,
        sampling: Sampling,
        plan: Plan,
        rounds: RoundsDecision,
        envelope: Envelope,
    ) -> Run:
        ledger = Ledger(
            backend=self._backend,
            budget=self._settings.budget,
            tracing=plan.trace,
            observer=self._observer,
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

    def _record(self, run: Run, plan: Plan, rounds: RoundsDecision, outcome: str) -> None:
        """One telemetry entry per finished psr request (not for cancelled ones: their run is partial)."""
        if self._telemetry is not None and "psr" in plan.strategies:
            self._telemetry.record(run, rounds, outcome)

    async def create(
        self, request: ChatCompletionRequest, plan: Plan, extension: Mapping[str, Any] | None = None
    ) -> Response:
        """`extension`: fields added to the `twice` object (the experiment and variant)."""
        await self.check_model(request.model)
        messages, sampling = self._conversation(request, plan)
        extra = extra_fields(request.model_extra or {}, plan.strategies, self._settings.backend)
        envelope = Envelope.new(request.model)
        started = time.perf_counter()
        rounds = self._decide_rounds(messages, plan)
        run = self._new_run(messages, sampling, plan, rounds, envelope)
        run.extra = extra
        source = _FreshAnswer(run, plan, rounds, envelope.request_id, dict(extension or {}), self._strategies)
        listener = _RunListener(self, run, plan, rounds, started, stream=request.stream)
        headers = envelope.headers(plan.applied)
        if "psr" in plan.strategies:
            headers[ROUNDS_GRANTED_HEADER] = str(run.rounds)
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return stream_response(
                render_stream(envelope, source, listener, include_usage=include_usage), headers
            )
        try:
            body = await render_json(envelope, source, listener)
        except Exception:
            self._record(run, plan, rounds, "error")
            raise
        self._observe(started, "false", "ok")
        headers["X-Twice-Rounds-Used"] = str(run.rounds_used)
        return json_response(body, headers)

    def _count_run(self, run: Run, hidden_tokens: int) -> None:
        usage = run.ledger.usage
        self._metrics.count_tokens(usage.prompt_tokens, usage.completion_tokens, hidden_tokens)
        if run.rounds:
            current = variant()
            self._metrics.rounds.labels(kind="granted", variant=current).inc(run.rounds)
            self._metrics.rounds.labels(kind="used", variant=current).inc(run.rounds_used)

    def _observe(self, started: float, stream: str, outcome: str) -> None:
        self._metrics.requests.labels(outcome=outcome, stream=stream).inc()
        self._metrics.request_latency.labels(stream=stream, variant=variant()).observe(
            time.perf_counter() - started
        )


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


@dataclass
class _RunListener:
    service: ChatService
    run: Run
    plan: Plan
    rounds: RoundsDecision
    started: float
    stream: bool

    def first_text(self) -> None:
        if self.stream:
            self.service._metrics.time_to_first_token.labels(variant=variant()).observe(
                time.perf_counter() - self.started
            )

    def answered(self, text: str, ending: Ending) -> None:
        hidden = ending.usage.completion_tokens_details if ending.usage is not None else None
        self.service._count_run(self.run, hidden.reasoning_tokens if hidden is not None else 0)
        self.service._record(self.run, self.plan, self.rounds, "refused" if self.run.refused else "answered")

    async def close(self, outcome: str) -> None:
        if outcome in ("backend_error", "server_error"):
            self.service._record(self.run, self.plan, self.rounds, "error")
        self.service._observe(self.started, "true", outcome)
