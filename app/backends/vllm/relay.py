"""vLLM's answer to a pass-through call as a frozen value: status, the headers to relay, and the body, whole
or as whole events while they arrive. Nothing of aiohttp is in it."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

import aiohttp

from app.backends.vllm.transport import event_stream, read_body

__all__ = ["Relayed", "relayed"]

_NOT_RELAYED = {
    # Hop-by-hop, or set by the gateway's own server for its own response.
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "content-encoding",
    "date",
    "server",
}


@dataclass(frozen=True, slots=True)
class Relayed:
    status: int
    headers: tuple[tuple[str, str], ...]
    """vLLM's headers, in order and each as often as sent (two `Set-Cookie` are two), less the hop-by-hop
    ones and those the gateway's server writes itself."""
    body: bytes = b""
    """The whole answer; empty for a 5xx, whose body is never read (it is not relayed: it may carry upstream
    internals), and for an event stream."""
    events: AsyncGenerator[bytes, None] | None = None
    """An event stream's whole events as they arrive (`event_stream`); whoever stops reading early closes it
    (`aclose`), which releases the connection."""


async def relayed(response: aiohttp.ClientResponse, *, stream: bool) -> Relayed:
    """What to relay of `response`: its events when a stream was asked for and vLLM answers one, else its
    bytes. The response is released once read (for a stream: once its events end or are closed)."""
    status = response.status
    headers = tuple((k, _as_sent(v)) for k, v in response.headers.items() if k.lower() not in _NOT_RELAYED)
    if status >= 500:
        response.release()
        return Relayed(status, headers)
    is_sse = response.headers.get("content-type", "").startswith("text/event-stream")
    if stream and is_sse and status == 200:
        return Relayed(status, headers, events=event_stream(response))
    try:
        return Relayed(status, headers, await read_body(response))
    finally:
        response.release()


def _as_sent(value: str) -> str:
    """A header value as the latin-1 string of the bytes vLLM sent: aiohttp decodes header bytes as UTF-8
    (undecodable bytes escaped), while an ASGI response writes a str value as latin-1 and cannot write
    `€` at all."""
    return value.encode("utf-8", "surrogateescape").decode("latin-1")
