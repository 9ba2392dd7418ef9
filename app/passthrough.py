"""The pass-through path: a request no strategy touches goes to vLLM as the client's bytes, and vLLM's answer
comes back as its bytes. Nothing is re-encoded; a stream is relayed event by event as it arrives.

Only whole SSE events are relayed (a chunk's trailing partial event waits for the rest of its bytes), so a
failure mid-stream can still end the stream with a well-formed final error event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

import aiohttp
import orjson
from starlette.responses import Response, StreamingResponse

from app.errors import UpstreamError, as_twice_error
from app.metrics import GatewayMetrics, variant
from app.streaming import DONE, SSE_HEADERS, sse_error
from refiners.backend import BackendTimeout, BackendUnavailable


@runtime_checkable
class ForwardingBackend(Protocol):
    async def forward(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> _UpstreamCall: ...


class _UpstreamCall(Protocol):
    response: aiohttp.ClientResponse


_HOP_HEADERS = {
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "content-encoding",
    "date",
    "server",
}


def _relayed_headers(response: aiohttp.ClientResponse, own: dict[str, str]) -> dict[str, str]:
    headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}
    headers.update(own)
    return headers


async def forward_chat(
    backend: ForwardingBackend,
    body: bytes,
    *,
    stream: bool,
    headers: dict[str, str],
    metrics: GatewayMetrics,
    started: float,
) -> Response:
    call = await backend.forward("/v1/chat/completions", body)
    upstream = call.response
    if upstream.status >= 500:
        upstream.release()
        raise UpstreamError(f"The model backend answered {upstream.status}.")
    is_sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
    if not (stream and is_sse and upstream.status == 200):
        try:
            content = await upstream.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise BackendTimeout("the vLLM server did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise BackendUnavailable("the connection to the vLLM server failed") from exc
        finally:
            upstream.release()
        if upstream.status == 200:
            _count_usage(content, metrics)
        return Response(content, status_code=upstream.status, headers=_relayed_headers(upstream, headers))
    return StreamingResponse(
        _relay_events(upstream, metrics, started),
        status_code=200,
        headers={**_relayed_headers(upstream, headers), **SSE_HEADERS},
        media_type="text/event-stream",
    )


def _count_usage(content: bytes, metrics: GatewayMetrics) -> None:
    try:
        usage = orjson.loads(content).get("usage") or {}
        metrics.count_tokens(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return


async def _relay_events(
    upstream: aiohttp.ClientResponse, metrics: GatewayMetrics, started: float
) -> AsyncIterator[bytes]:
    pending = b""
    first = True
    done = False
    outcome = "cancelled"
    try:
        async for chunk in upstream.content.iter_any():
            pending += chunk
            end = pending.rfind(b"\n\n")
            if end < 0:
                continue
            ready, pending = pending[: end + 2], pending[end + 2 :]
            if first:
                metrics.time_to_first_token.labels(variant=variant()).observe(time.perf_counter() - started)
                first = False
            if b'"usage"' in ready:
                _count_stream_usage(ready, metrics)
            done = done or ready.endswith(DONE)
            yield ready
        if pending.strip():
            raise UpstreamError("The model backend ended the stream inside an event.")
        if not done:
            raise UpstreamError("The model backend ended the stream before [DONE].")
        outcome = "ok"
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        outcome = "backend_error"
        yield sse_error(as_twice_error(BackendTimeout(str(exc))))
        yield DONE
    except (aiohttp.ClientError, UpstreamError) as exc:
        outcome = "backend_error"
        yield sse_error(
            as_twice_error(exc if isinstance(exc, UpstreamError) else BackendUnavailable(str(exc)))
        )
        yield DONE
    finally:
        upstream.release()
        metrics.requests.labels(outcome=outcome, stream="true").inc()
        metrics.request_latency.labels(stream="true", variant=variant()).observe(
            time.perf_counter() - started
        )


def _count_stream_usage(events: bytes, metrics: GatewayMetrics) -> None:
    for line in events.split(b"\n"):
        if line.startswith(b"data: {") and b'"usage"' in line:
            _count_usage(line[6:], metrics)
