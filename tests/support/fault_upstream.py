"""A loopback vLLM stand-in that misbehaves on request: a documented fake for fault tests and `bench/load.py`.

It is tests/support/vllm_stub.py (health, models, chat JSON and SSE, logprobs) with one addition: a chat
request whose body contains a marker `[fault:<name>]` (in any message; the gateway copies user text into
every backend call it makes for that request, fenced or not) gets that fault instead of an answer:

| fault | what the upstream does |
| --- | --- |
| `hang_before` | accepts the request and sends nothing for `hang_s` seconds |
| `hang_mid_stream` | a stream sends its first events, then nothing for `hang_s` (JSON calls: normal) |
| `status_500` | answers 500 with an error body carrying `SECRET_DETAIL` (which must never reach a client) |
| `malformed_json` | answers 200 `application/json` whose body is cut off mid-object |
| `malformed_sse` | a stream whose second event is not JSON, and which ends inside an event |
| `truncated_sse` | a stream that ends cleanly at an event boundary, but early: no finish, no `[DONE]` |
| `reset_before` | resets the connection (RST) before answering |
| `reset_mid_stream` | a stream sends its first events, then resets the connection |
| `slow_stream` | `slow_events` events, one every `slow_delay_s`; a client that leaves is recorded |

A refused connection needs no mode: point the gateway at a port nobody listens on (`free_port()`).

What the upstream saw is kept in `FaultState`: `faults` (names, in arrival order) and `aborted` (streams
whose client closed the connection before the end: the gateway cancelled its backend work). aiohttp does not
cancel a handler when its client leaves unless told to: this server is run with `handler_cancellation`, so a
handler whose client left stops (and is recorded) at once.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from tests.support.loopback import serving_app
from tests.support.vllm_stub import StubState, VllmStub

__all__ = ["FAULTS", "SECRET_DETAIL", "FaultState", "FaultUpstream", "fault_marker", "running_fault_upstream"]

FAULTS = (
    "hang_before",
    "hang_mid_stream",
    "status_500",
    "malformed_json",
    "malformed_sse",
    "truncated_sse",
    "reset_before",
    "reset_mid_stream",
    "slow_stream",
)
SECRET_DETAIL = "upstream-internal-detail-7f3a9c"
_MARKER = re.compile(rb"\[fault:([a-z_0-9]+)\]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def fault_marker(name: str) -> str:
    """The text that, put in a message, selects the fault `name`."""
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}")
    return f"[fault:{name}]"


@dataclass
class FaultState(StubState):
    hang_s: float = 5.0
    slow_events: int = 40
    slow_delay_s: float = 0.05
    faults: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    keep_received: bool = False


def _event(content: str, finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "stub-model",
        "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _reset(request: web.Request) -> None:
    """Close the connection with a TCP RST rather than a FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class FaultUpstream(VllmStub):
    def __init__(self, state: FaultState | None = None) -> None:
        self.faults = state or FaultState()
        super().__init__(self.faults)
        self.app.middlewares.append(self._inject)

    @web.middleware
    async def _inject(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST":
            return await handler(request)
        body = await request.read()  # cached: the stub's handler reads it again
        found = _MARKER.search(body)
        if found is None:
            return await handler(request)
        name = found.group(1).decode()
        self.faults.faults.append(name)
        streaming = b'"stream":true' in body.replace(b" ", b"")
        return await self._fault(name, request, handler, streaming=streaming)

    async def _fault(
        self, name: str, request: web.Request, handler: Handler, *, streaming: bool
    ) -> web.StreamResponse:
        answered = await self._whole_fault(name, request)
        if answered is not None:
            return answered
        if not streaming:
            return await handler(request)  # the stream-only faults answer JSON calls normally
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await self._stream_fault(name, request, response)
        except (ConnectionError, asyncio.CancelledError):
            self.faults.aborted.append(name)  # the client (the gateway) closed the connection mid-stream
            raise
        return response

    async def _whole_fault(self, name: str, request: web.Request) -> web.StreamResponse | None:
        """The faults that replace the whole answer; None for the stream faults."""
        if name == "hang_before":
            try:
                await asyncio.sleep(self.faults.hang_s)
            except asyncio.CancelledError:
                self.faults.aborted.append(name)  # the client (the gateway) closed the connection
                raise
            return web.json_response({"error": {"message": "too late"}}, status=500)
        if name == "status_500":
            error = {"error": {"message": f"CUDA out of memory at {SECRET_DETAIL}", "type": "InternalError"}}
            return web.Response(status=500, body=orjson.dumps(error), content_type="application/json")
        if name == "malformed_json":
            return web.Response(
                status=200, body=b'{"id": "x", "choices": [{"mess', content_type="application/json"
            )
        if name == "reset_before":
            _reset(request)
            return web.Response(status=200)
        return None

    async def _stream_fault(self, name: str, request: web.Request, response: web.StreamResponse) -> None:
        if name == "slow_stream":
            await self._slow(response)
            return
        await response.write(_event("Hello"))
        await response.write(_event(" there"))
        if name == "hang_mid_stream":
            await asyncio.sleep(self.faults.hang_s)
        elif name == "malformed_sse":
            await response.write(b"data: {this is not json\n\n")
            await response.write(b'data: {"id": "chatcmpl-fault", "choi')
        elif name == "reset_mid_stream":
            _reset(request)
            return
        await response.write_eof()

    async def _slow(self, response: web.StreamResponse) -> None:
        state = self.faults
        for index in range(state.slow_events):
            await asyncio.sleep(state.slow_delay_s)
            await response.write(_event(f" t{index}"))
        await response.write(_event("", "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        state.completed.append("slow_stream")


@contextmanager
def running_fault_upstream(
    state: FaultState | None = None, port: int | None = None
) -> Iterator[tuple[str, FaultUpstream]]:
    """Serve a fault upstream on loopback in a thread of its own; yields its base URL and the server."""
    upstream = FaultUpstream(state)
    with serving_app(upstream.app, port, handler_cancellation=True, shutdown_timeout=1.0) as url:
        yield url, upstream
