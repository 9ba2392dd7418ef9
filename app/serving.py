"""Chat completions: from a validated request to a JSON or SSE response. No route decorators here."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response, StreamingResponse

from app.errors import InvalidRequest, NotFound, as_twice_error
from app.metrics import GatewayMetrics, outcome_of
from app.passthrough import ForwardingBackend, forward_chat
from app.protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    PromptTokensDetails,
    UsageInfo,
)
from app.requests import check_limits, load_json_object, parse_chat_request
from app.settings import Settings
from app.streaming import DONE, SSE_HEADERS, sse_error, sse_event
from refiners.backend import Backend, GenerationRequest, Sampling, Usage

log = logging.getLogger("twice.serving")


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str
    created: int
    started: float

    @classmethod
    def new(cls) -> RequestContext:
        return cls(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), time.perf_counter())

    def headers(self) -> dict[str, str]:
        return {"X-Twice-Request-Id": self.request_id}


def usage_info(usage: Usage) -> UsageInfo:
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


class ChatService:
    def __init__(
        self,
        backend: Backend,
        metrics: GatewayMetrics,
        settings: Settings,
        forwarder: ForwardingBackend | None = None,
    ) -> None:
        self._backend = backend
        self._metrics = metrics
        self._limits = settings.limits
        self._forwarder = forwarder

    async def handle(self, body: bytes) -> Response:
        """Every outcome is counted here, errors included (they are raised on to the one error handler)."""
        stream = "false"
        try:
            payload = load_json_object(body)
            check_limits(payload, self._limits)
            stream = "true" if payload.get("stream") is True else "false"
            if self._forwarder is not None:
                return await self._pass_through(payload, body, stream=stream == "true")
            return await self.create(parse_chat_request(payload))
        except Exception as exc:
            self._metrics.requests.labels(
                outcome=outcome_of(as_twice_error(exc).status_code), stream=stream
            ).inc()
            raise

    async def _pass_through(self, payload: dict[str, Any], body: bytes, *, stream: bool) -> Response:
        assert self._forwarder is not None
        self.check_model(payload["model"])
        ctx = RequestContext.new()
        response = await forward_chat(
            self._forwarder,
            body,
            stream=stream,
            headers=ctx.headers(),
            metrics=self._metrics,
            started=ctx.started,
        )
        if not isinstance(response, StreamingResponse):
            self._observe(ctx, "false", outcome_of(response.status_code))
        return response

    def check_model(self, model: str) -> None:
        if self._backend.model and model != self._backend.model:
            raise NotFound(
                f"The model '{model}' does not exist; this server serves '{self._backend.model}'.",
                param="model",
                code="model_not_found",
            )

    def generation_request(self, request: ChatCompletionRequest, ctx: RequestContext) -> GenerationRequest:
        if request.n is not None and request.n != 1:
            raise InvalidRequest(
                "Only n=1 is supported on this backend.", param="n", code="unsupported_value"
            )
        messages = tuple(m.to_chat_message() for m in request.messages)
        if messages[-1].role == "assistant":
            # A trailing assistant message is a partial answer to continue (as vLLM's continue_final_message).
            messages, prefix = messages[:-1], messages[-1].content
        else:
            prefix = ""
        if not messages:
            raise InvalidRequest("'messages' needs a system or user message.", param="messages")
        sampling = Sampling(
            max_tokens=request.requested_max_tokens() or self._limits.default_max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            stop=request.stop_sequences(),
            seed=request.seed,
        )
        return GenerationRequest(
            messages=messages, sampling=sampling, prefix=prefix, routing_key=ctx.request_id
        )

    async def create(self, request: ChatCompletionRequest) -> Response:
        self.check_model(request.model)
        ctx = RequestContext.new()
        generation = self.generation_request(request, ctx)
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return StreamingResponse(
                self._stream(generation, request.model, ctx, include_usage),
                media_type="text/event-stream",
                headers={**SSE_HEADERS, **ctx.headers()},
            )
        completion = await self._backend.complete(generation)
        self._metrics.count_tokens(completion.usage.prompt_tokens, completion.usage.completion_tokens)
        body = ChatCompletion(
            id=ctx.request_id,
            created=ctx.created,
            model=request.model,
            choices=[
                Choice(
                    message=AssistantMessage(content=completion.text), finish_reason=completion.finish_reason
                )
            ],
            usage=usage_info(completion.usage),
        )
        self._observe(ctx, "false", "ok")
        return Response(
            body.model_dump_json(exclude_none=True), media_type="application/json", headers=ctx.headers()
        )

    def _observe(self, ctx: RequestContext, stream: str, outcome: str) -> None:
        self._metrics.requests.labels(outcome=outcome, stream=stream).inc()
        self._metrics.request_latency.labels(stream=stream).observe(time.perf_counter() - ctx.started)

    async def _stream(
        self, generation: GenerationRequest, model: str, ctx: RequestContext, include_usage: bool
    ) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return sse_event(
                {
                    "id": ctx.request_id,
                    "object": "chat.completion.chunk",
                    "created": ctx.created,
                    "model": model,
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                    ],
                }
            )

        outcome = "cancelled"
        first_token = True
        try:
            yield chunk({"role": "assistant", "content": ""})
            usage = Usage()
            finish = "stop"
            async for piece in self._backend.stream(generation):
                if piece.text:
                    if first_token:
                        self._metrics.time_to_first_token.observe(time.perf_counter() - ctx.started)
                        first_token = False
                    yield chunk({"content": piece.text})
                if piece.finish_reason is not None:
                    finish = piece.finish_reason
                if piece.usage is not None:
                    usage = piece.usage
            yield chunk({}, finish)
            if include_usage:
                yield sse_event(
                    {
                        "id": ctx.request_id,
                        "object": "chat.completion.chunk",
                        "created": ctx.created,
                        "model": model,
                        "choices": [],
                        "usage": usage_info(usage).model_dump(),
                    }
                )
            self._metrics.count_tokens(usage.prompt_tokens, usage.completion_tokens)
            outcome = "ok"
            yield DONE
        except Exception as exc:
            error = as_twice_error(exc)
            if error.status_code >= 500 and not isinstance(exc, type(error)):
                log.warning("stream failed after it started: %s", type(exc).__name__)
            outcome = "backend_error" if error.status_code in (502, 503, 504) else "server_error"
            yield sse_error(error)
            yield DONE
        finally:
            self._observe(ctx, "true", outcome)
