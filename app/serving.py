"""Chat completions: from a request body to a JSON or SSE response. No route decorators here.

A request whose plan applies no strategy goes to vLLM byte for byte (app/passthrough.py) when the backend is
vllm; every other request runs its plan through `refiners.pipeline.run_plan`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping
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
from app.protocol.chat import AssistantMessage, ChatCompletion, ChatCompletionRequest, Choice
from app.requests import check_limits, load_json_object, parse_chat_request
from app.responses import RequestContext, plan_headers, twice_extension, usage_info
from app.rounds import NO_ROUNDS, ROUNDS_GRANTED_HEADER, RoundsDecision, RoundsPolicy
from app.settings import Settings
from app.streaming import DONE, SSE_HEADERS, sse_error
from app.telemetry import Telemetry
from refiners.backend import Sampling
from refiners.base import Conversation, Finished, Run, Strategy, TextPiece
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
                response = self._gate.replay(ticket, payload)
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
        ctx = RequestContext.new(payload["model"])
        headers = {**ctx.headers(), "X-Twice-Strategy-Applied": "none"}
        response = await forward_chat(
            self._forwarder, body, stream=stream, headers=headers, metrics=self._metrics, started=ctx.started
        )
        if not isinstance(response, StreamingResponse):
            self._observe(ctx, "false", outcome_of(response.status_code))
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
        ctx: RequestContext,
    ) -> Run:
        ledger = Ledger(
            backend=self._backend,
            budget=self._settings.budget,
            tracing=plan.trace,
            observer=self._observer,
            routing_key=ctx.request_id,
            model=ctx.model,
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
        labels = dict(extension or {})
        await self.check_model(request.model)
        messages, sampling = self._conversation(request, plan)
        extra = extra_fields(request.model_extra or {}, plan.strategies, self._settings.backend)
        ctx = RequestContext.new(request.model)
        rounds = self._decide_rounds(messages, plan)
        run = self._new_run(messages, sampling, plan, rounds, ctx)
        run.extra = extra
        headers = plan_headers(plan, ctx)
        if "psr" in plan.strategies:
            headers[ROUNDS_GRANTED_HEADER] = str(run.rounds)
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return StreamingResponse(
                self._stream(run, plan, rounds, ctx, include_usage, labels),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, **headers},
            )
        parts: list[str] = []
        finished = Finished("stop", 0)
        try:
            async for event in run_plan(plan.strategies, self._strategies, run):
                if isinstance(event, TextPiece):
                    parts.append(event.text)
                else:
                    finished = event
        except Exception:
            self._record(run, plan, rounds, "error")
            raise
        self._record(run, plan, rounds, "refused" if run.refused else "answered")
        self._count_run(run, finished)
        body = ChatCompletion(
            id=ctx.request_id,
            created=ctx.created,
            model=request.model,
            choices=[
                Choice(message=AssistantMessage(content="".join(parts)), finish_reason=finished.finish_reason)
            ],
            usage=usage_info(run.ledger.usage, finished.visible_tokens),
            twice={**twice_extension(run, plan, ctx, rounds), **labels},
        )
        self._observe(ctx, "false", "ok")
        headers["X-Twice-Rounds-Used"] = str(run.rounds_used)
        return Response(
            body.model_dump_json(exclude_none=True), media_type="application/json", headers=headers
        )

    async def _stream(
        self,
        run: Run,
        plan: Plan,
        rounds: RoundsDecision,
        ctx: RequestContext,
        include_usage: bool,
        labels: dict[str, Any],
    ) -> AsyncIterator[bytes]:
        outcome = "cancelled"
        first_text = True
        try:
            yield ctx.chunk({"role": "assistant", "content": ""})
            finished = Finished("stop", 0)
            async for event in run_plan(plan.strategies, self._strategies, run):
                if isinstance(event, Finished):
                    finished = event
                elif event.text:
                    if first_text:
                        self._metrics.time_to_first_token.labels(variant=variant()).observe(
                            time.perf_counter() - ctx.started
                        )
                        first_text = False
                    yield ctx.chunk({"content": event.text})
            self._count_run(run, finished)
            self._record(run, plan, rounds, "refused" if run.refused else "answered")
            extension = {**twice_extension(run, plan, ctx, rounds), **labels}
            yield ctx.chunk({}, finished.finish_reason, twice=extension)
            if include_usage:
                yield ctx.usage_chunk(usage_info(run.ledger.usage, finished.visible_tokens))
            outcome = "ok"
            yield DONE
        except Exception as exc:
            error = as_twice_error(exc)
            if error.status_code >= 500:
                log.warning("stream %s failed after it started: %s", ctx.request_id, type(exc).__name__)
            outcome = "backend_error" if error.status_code in (502, 503, 504) else "server_error"
            self._record(run, plan, rounds, "error")
            yield sse_error(error)
            yield DONE
        finally:
            self._observe(ctx, "true", outcome)

    def _count_run(self, run: Run, finished: Finished) -> None:
        usage = run.ledger.usage
        self._metrics.count_tokens(
            usage.prompt_tokens,
            usage.completion_tokens,
            max(0, usage.completion_tokens - finished.visible_tokens),
        )
        if run.rounds:
            current = variant()
            self._metrics.rounds.labels(kind="granted", variant=current).inc(run.rounds)
            self._metrics.rounds.labels(kind="used", variant=current).inc(run.rounds_used)

    def _observe(self, ctx: RequestContext, stream: str, outcome: str) -> None:
        self._metrics.requests.labels(outcome=outcome, stream=stream).inc()
        self._metrics.request_latency.labels(stream=stream, variant=variant()).observe(
            time.perf_counter() - ctx.started
        )
