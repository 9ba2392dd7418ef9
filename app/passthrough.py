"""The pass-through path: a request no strategy touches goes to vLLM as the client's bytes, and vLLM's answer
comes back as its bytes. Nothing is re-encoded; a stream is relayed event by event as it arrives.

Only whole SSE events are relayed (the vLLM client's `Relayed.events`), so a failure mid-stream can still end
the stream with a well-formed final error event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Protocol, runtime_checkable

import orjson
from starlette.responses import Response, StreamingResponse

from app.backends.vllm import Relayed, StreamCut, event_data
from app.errors import UpstreamError, as_twice_error
from app.metrics import GatewayMetrics, variant
from app.render import DONE, SSE_HEADERS, error_event
from refiners.backend import BackendError


@runtime_checkable
class ForwardingBackend(Protocol):
    async def forward(
        self, path: str, body: bytes, *, stream: bool, headers: dict[str, str] | None = None
    ) -> Relayed: ...


async def forward_chat(
    backend: ForwardingBackend,
    body: bytes,
    *,
    stream: bool,
    headers: dict[str, str],
    metrics: GatewayMetrics,
    started: float,
) -> Response:
    relayed = await backend.forward("/v1/chat/completions", body, stream=stream)
    if relayed.status >= 500:
        raise UpstreamError(f"The model backend answered {relayed.status}.")
    if relayed.events is None:
        if relayed.status == 200:
            _count_usage(relayed.body, metrics)
        return Response(relayed.body, status_code=relayed.status, headers={**relayed.headers, **headers})
    return StreamingResponse(
        _relay_events(relayed.events, metrics, started),
        status_code=200,
        headers={**relayed.headers, **headers, **SSE_HEADERS},
        media_type="text/event-stream",
    )


def _count_usage(content: bytes, metrics: GatewayMetrics) -> None:
    try:
        usage = orjson.loads(content).get("usage") or {}
        metrics.count_tokens(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return


async def _relay_events(
    events: AsyncGenerator[bytes, None], metrics: GatewayMetrics, started: float
) -> AsyncGenerator[bytes, None]:
    first = True
    outcome = "cancelled"
    try:
        async for ready in events:
            if first:
                metrics.time_to_first_token.labels(variant=variant()).observe(time.perf_counter() - started)
                first = False
            if b'"usage"' in ready:
                _count_stream_usage(ready, metrics)
            yield ready
        outcome = "ok"
    except BackendError as exc:
        outcome = "backend_error"
        yield error_event(UpstreamError(str(exc)) if isinstance(exc, StreamCut) else as_twice_error(exc))
        yield DONE
    finally:
        await events.aclose()
        metrics.requests.labels(outcome=outcome, stream="true").inc()
        metrics.request_latency.labels(stream="true", variant=variant()).observe(
            time.perf_counter() - started
        )


def _count_stream_usage(events: bytes, metrics: GatewayMetrics) -> None:
    for data in event_data(events):
        if b'"usage"' in data:
            _count_usage(data, metrics)
