"""Very fast fake OpenAI-compatible upstream for loopback benchmarks.

Copied from the shared gateway-overhead harness (`../shared/bench/mock_upstream.py`, the harness behind
issue #20's side-by-side figures), with type annotations and one more listed model (`mock-model-d50`, the
50 ms upstream, so a gateway that checks the model name serves it).

A minimal HTTP/1.1 server on raw asyncio Protocols (uvloop if importable),
with keep-alive, Content-Length and chunked request bodies.  Only stdlib is
required.

Endpoints
  POST /v1/chat/completions   (also /chat/completions)
       JSON response, or SSE (Transfer-Encoding: chunked) when the body has
       "stream": true.  The "model" of the request is echoed back.
  GET  /v1/models             (also /models)
  GET  /health
  anything else -> 404 JSON

Environment
  MOCK_HOST            bind address, default 127.0.0.1 (loopback only;
                       anything that is not a loopback address is refused)
  MOCK_PORT            default 18000
  MOCK_CHUNKS          number of content chunks in a streamed answer, default 10
  MOCK_DELAY_MS        fixed delay before every response (both kinds), default 0
  MOCK_CHUNK_DELAY_MS  delay between streamed chunks, default 0
  MOCK_NO_UVLOOP=1     use the stdlib event loop even if uvloop is installed

Per-request overrides through the model name (gateways forward the model name,
not custom headers): a model name containing "-d<N>" delays the response by N ms,
"-cd<N>" waits N ms between streamed chunks, e.g. "mock-model-cd20" (a non-streamed
answer for such a model is delayed by the whole stream's duration, N*(MOCK_CHUNKS+2) ms,
as a real upstream would only answer once generation is done).
"""

import asyncio
import ipaddress
import json
import os
import re
import sys
import time
from collections.abc import Coroutine
from typing import Any, cast

HOST = os.environ.get("MOCK_HOST", "127.0.0.1")
PORT = int(os.environ.get("MOCK_PORT", "18000"))
CHUNKS = int(os.environ.get("MOCK_CHUNKS", "10"))
DELAY = float(os.environ.get("MOCK_DELAY_MS", "0")) / 1000.0
CHUNK_DELAY = float(os.environ.get("MOCK_CHUNK_DELAY_MS", "0")) / 1000.0

_MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
_USAGE_RE = re.compile(rb'"include_usage"\s*:\s*true')
_DELAY_RE = re.compile(r"-d(\d+)(?:-|$)")
_CHUNK_DELAY_RE = re.compile(r"-cd(\d+)(?:-|$)")
_delays: dict[str, tuple[float, float]] = {}


def delays_for(model: str) -> tuple[float, float]:
    """(response delay s, chunk delay s) for a model name; env defaults unless overridden."""
    r = _delays.get(model)
    if r is None:
        d = _DELAY_RE.search(model)
        cd = _CHUNK_DELAY_RE.search(model)
        r = (int(d.group(1)) / 1000.0 if d else DELAY, int(cd.group(1)) / 1000.0 if cd else CHUNK_DELAY)
        if len(_delays) > 1000:
            _delays.clear()
        _delays[model] = r
    return r


CREATED = int(time.time())
WORDS = ["Hello", " from", " the", " mock", " upstream", ",", " this", " is", " token", " text"]


def _resp(status: bytes, body: bytes, ctype: bytes = b"application/json", close: bool = False) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: "
        + ctype
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + (b"\r\nconnection: close" if close else b"")
        + b"\r\n\r\n"
        + body
    )


def _completion_body(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-mock0001",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(WORDS)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": len(WORDS), "total_tokens": 9 + len(WORDS)},
        },
        separators=(",", ":"),
    ).encode()


def _chunk(
    model: str,
    delta: dict[str, Any] | None,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    choices: bool = True,
) -> bytes:
    obj: dict[str, Any] = {
        "id": "chatcmpl-mock0001",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_mock",
        "choices": (
            [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []
        ),
    }
    if usage is not None:
        obj["usage"] = usage
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)  # one HTTP chunk per SSE event


def _stream_parts(model: str, usage: bool) -> list[bytes]:
    parts = [_chunk(model, {"role": "assistant", "content": ""})]
    for i in range(CHUNKS):
        parts.append(_chunk(model, {"content": WORDS[i % len(WORDS)]}))
    parts.append(_chunk(model, {}, finish="stop"))
    if usage:
        parts.append(
            _chunk(
                model,
                None,
                usage={"prompt_tokens": 9, "completion_tokens": CHUNKS, "total_tokens": 9 + CHUNKS},
                choices=False,
            )
        )
    done = b"data: [DONE]\n\n"
    parts.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    return parts


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
MODELS = _resp(
    b"200 OK",
    json.dumps(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "mock"}
                for m in ("mock-model", "mock-model-d50", "mock-model-cd20", "gpt-4o-mini")
            ],
        }
    ).encode(),
)
HEALTH = _resp(b"200 OK", b'{"status":"ok"}')
NOT_FOUND = _resp(b"404 Not Found", b'{"error":{"message":"not found","type":"invalid_request_error"}}')
BAD = _resp(b"400 Bad Request", b'{"error":{"message":"bad request"}}', close=True)

_cache_json: dict[str, bytes] = {}
_cache_stream: dict[tuple[str, bool], list[bytes]] = {}


def completion_response(model: str) -> bytes:
    r = _cache_json.get(model)
    if r is None:
        if len(_cache_json) > 1000:
            _cache_json.clear()
        r = _cache_json[model] = _resp(b"200 OK", _completion_body(model))
    return r


def stream_parts(model: str, usage: bool) -> list[bytes]:
    key = (model, usage)
    r = _cache_stream.get(key)
    if r is None:
        if len(_cache_stream) > 1000:
            _cache_stream.clear()
        r = _cache_stream[key] = _stream_parts(model, usage)
    return r


_tasks: set[asyncio.Future[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)  # a reference until it is done
    task.add_done_callback(_tasks.discard)


class HttpProto(asyncio.Protocol):
    __slots__ = ("buf", "busy", "closed", "t")

    t: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)  # a stream transport (uvloop's is not a subclass)
        self.buf = b""
        self.busy = False  # a delayed/streamed response is in flight
        self.closed = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self._process()

    def _process(self) -> None:  # noqa: PLR0911, PLR0912 - a compact HTTP/1.1 request parser
        while not self.busy and not self.closed:
            buf = self.buf
            he = buf.find(b"\r\n\r\n")
            if he < 0:
                if len(buf) > 65536:
                    self.t.write(BAD)
                    self.t.close()
                return
            head = buf[:he]
            line_end = head.find(b"\r\n")
            reqline = head if line_end < 0 else head[:line_end]
            try:
                method, path, _ = reqline.split(b" ", 2)
            except ValueError:
                self.t.write(BAD)
                self.t.close()
                return
            hl = head.lower()
            keep = b"connection: close" not in hl and not reqline.endswith(b"HTTP/1.0")
            pos = he + 4
            body = b""
            ci = hl.find(b"\r\ncontent-length:")
            if ci >= 0:
                ce = hl.find(b"\r\n", ci + 2)
                n = int(hl[ci + 17 : ce if ce >= 0 else len(hl)].strip())
                if len(buf) < pos + n:
                    return
                body = buf[pos : pos + n]
                pos += n
            elif b"\r\ntransfer-encoding: chunked" in hl:
                body_parts = []
                p = pos
                while True:
                    le = buf.find(b"\r\n", p)
                    if le < 0:
                        return
                    size = int(buf[p:le].split(b";")[0], 16)
                    if size == 0:
                        if len(buf) < le + 4:
                            return
                        if buf[le + 2 : le + 4] == b"\r\n":
                            p = le + 4
                        else:  # trailers
                            te = buf.find(b"\r\n\r\n", le + 2)
                            if te < 0:
                                return
                            p = te + 4
                        break
                    if len(buf) < le + 2 + size + 2:
                        return
                    body_parts.append(buf[le + 2 : le + 2 + size])
                    p = le + 2 + size + 2
                body = b"".join(body_parts)
                pos = p
            self.buf = buf[pos:]
            qi = path.find(b"?")
            if qi >= 0:
                path = path[:qi]
            self._dispatch(method, path, body, keep)
            if not keep:
                if not self.busy:
                    self.t.close()
                return

    def _dispatch(self, method: bytes, path: bytes, body: bytes, keep: bool) -> None:
        if path.endswith(b"/chat/completions") and method == b"POST":
            m = _MODEL_RE.search(body)
            model = m.group(1).decode() if m else "mock-model"
            delay, chunk_delay = delays_for(model)
            if _STREAM_RE.search(body):
                parts = stream_parts(model, bool(_USAGE_RE.search(body)))
                self.busy = True
                _spawn(self._slow(None, parts, keep, delay, chunk_delay))
            elif delay > 0 or chunk_delay > 0:
                # a non-streamed answer arrives once the whole "generation" is done:
                # the same time a streamed one takes to send its last event
                self.busy = True
                whole = completion_response(model)
                slow = self._slow(whole, None, keep, delay + chunk_delay * (CHUNKS + 2), 0)
                _spawn(slow)
            else:
                self.t.write(completion_response(model))
        elif method == b"GET" and path.endswith(b"/models"):
            self.t.write(MODELS)
        elif method == b"GET" and path in (b"/health", b"/", b"/healthz"):
            self.t.write(HEALTH)
        else:
            self.t.write(NOT_FOUND)

    async def _slow(
        self, whole: bytes | None, parts: list[bytes] | None, keep: bool, delay: float, chunk_delay: float
    ) -> None:
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            if self.closed:
                return
            if whole is not None:
                self.t.write(whole)
            elif parts is None:
                return
            elif chunk_delay > 0:
                self.t.write(STREAM_HEAD + parts[0])
                for p in parts[1:]:
                    await asyncio.sleep(chunk_delay)
                    if self.closed:
                        return
                    self.t.write(p)
            else:
                self.t.write(STREAM_HEAD + b"".join(parts))
        finally:
            self.busy = False
        if not keep:
            self.t.close()
        elif self.buf and not self.closed:
            self._process()


def main() -> None:
    if not ipaddress.ip_address(HOST).is_loopback:
        sys.exit(f"mock_upstream: refusing to bind a non-loopback address: {HOST}")
    if os.environ.get("MOCK_NO_UVLOOP") != "1":
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(
        loop.create_server(HttpProto, HOST, PORT, backlog=1024, reuse_address=True)
    )
    print(
        f"mock_upstream listening on http://{HOST}:{PORT} (loop={type(loop).__module__} chunks={CHUNKS} "
        f"delay_ms={DELAY * 1000:g} chunk_delay_ms={CHUNK_DELAY * 1000:g})",
        flush=True,
    )
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
