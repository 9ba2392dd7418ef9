"""The pass-through (app/passthrough.py): a request goes to vLLM as the client's bytes and vLLM's answer comes
back as its bytes: headers kept or dropped, status and body relayed, a stream relayed event by event, what
the request's account reads of the relayed bytes, and every failure as an OpenAI-style error.

The upstream is a real aiohttp server on loopback answering what each test scripts; the gateway's side is
the real vLLM client (`VllmBackend.forward`) and the real Starlette response, sent as uvicorn sends one
(ASGI spec 2.3: the response listens for the client leaving)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry
from starlette.responses import Response
from starlette.types import Message, Scope

from app.account import Account, Answered
from app.backends.vllm import VllmBackend
from app.errors import UpstreamError, as_twice_error
from app.metrics import GatewayMetrics
from app.passthrough import ForwardingBackend, forward_chat
from app.render import APPLIED_HEADER, REQUEST_ID_HEADER, Envelope
from app.settings import VllmSettings
from refiners.backend import BackendTimeout, BackendUnavailable
from tests.support.fault_upstream import _reset
from tests.support.loopback import free_port, serving_app

PATH = "/v1/chat/completions"
READ_TIMEOUT_S = 0.4
HANG_S = 3.0
ROUTING_HEADER = "X-Twice-Routing-Key"
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
DONE = b"data: [DONE]\n\n"


# --- the scripted upstream ---------------------------------------------------------------------------------


@dataclass
class Answer:
    """What the upstream answers the next chat call: `body` whole, or (`stream`) the headers, then `chunks`
    written one by one (`pause_s` before each), then the end, or `then`: `hang` (nothing more for HANG_S) or
    `reset` (a TCP RST). `before`: `hang` or `reset` instead of any answer."""

    status: int = 200
    headers: MutableMapping[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    body: bytes = b""
    stream: bool = False
    chunks: tuple[bytes, ...] = ()
    pause_s: float = 0.0
    then: str = "end"
    before: str = ""


@dataclass
class Upstream:
    url: str = ""
    answer: Answer = field(default_factory=Answer)
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    aborted: list[Answer] = field(default_factory=list)
    """The answers whose client (the gateway) closed the connection before their end (an earlier test's
    may be recorded late, so a test looks for its own)."""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        self.headers.append({name.lower(): value for name, value in request.headers.items()})
        answer = self.answer
        if answer.before == "reset":
            _reset(request)
            return web.Response()
        if answer.before == "hang":
            await asyncio.sleep(HANG_S)
        if not answer.stream:
            return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        await response.prepare(request)
        try:
            for chunk in answer.chunks:
                if answer.pause_s:
                    await asyncio.sleep(answer.pause_s)
                await response.write(chunk)
            if answer.then == "hang":
                await asyncio.sleep(HANG_S)
            elif answer.then == "reset":
                _reset(request)
                return response
        except (ConnectionError, asyncio.CancelledError):
            self.aborted.append(answer)
            raise
        await response.write_eof()
        return response


def sse(*chunks: bytes, pause_s: float = 0.0, then: str = "end") -> Answer:
    return Answer(
        headers={"Content-Type": "text/event-stream"},
        stream=True,
        chunks=chunks,
        pause_s=pause_s,
        then=then,
    )


def event(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chunk(content: str | None = None, finish: str | None = None, index: int = 0, **delta: Any) -> bytes:
    if content is not None:
        delta["content"] = content
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return event({"id": "chatcmpl-up", "object": "chat.completion.chunk", "choices": [choice]})


USAGE_EVENT = event({"id": "chatcmpl-up", "object": "chat.completion.chunk", "choices": [], "usage": USAGE})
STREAM = (chunk("", role="assistant"), chunk("Hel"), chunk("lo"), chunk(finish="stop"), USAGE_EVENT, DONE)


def completion(content: str | None = "Hello", *, usage: object = USAGE, **message: Any) -> bytes:
    """A chat.completion as vLLM writes one, indented: bytes no re-encoding would give back."""
    body = {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }
    return json.dumps(body, indent=1).encode()


def request_body(*, stream: bool) -> bytes:
    """A client's request with spacing, key order and a field the gateway does not know, all kept."""
    return (
        b'{ "messages": [{"role": "user", "content": "Hi \\u00e9"}],\n  "model": "stub-model", '
        b'"vllm_xargs": {"x": 1}, "stream": ' + (b"true" if stream else b"false") + b"}"
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    scripted = Upstream()
    app = web.Application()
    app.router.add_post(PATH, scripted.chat)
    with serving_app(app, handler_cancellation=True, shutdown_timeout=1.0) as url:
        scripted.url = url
        yield scripted


@pytest.fixture(autouse=True)
def fresh(upstream: Upstream) -> None:
    upstream.answer = Answer(body=completion())
    upstream.bodies.clear()
    upstream.headers.clear()
    upstream.aborted.clear()


@pytest.fixture(scope="module")
async def backend(upstream: Upstream) -> AsyncIterator[VllmBackend]:
    settings = VllmSettings(
        upstream=upstream.url, model="stub-model", read_timeout_s=READ_TIMEOUT_S, retries=0
    )
    started = VllmBackend(settings)
    await started.start()
    yield started
    await started.close()


# --- the gateway's side ------------------------------------------------------------------------------------


@dataclass
class Kept:
    """The gate's keeper: what a complete answer is handed to."""

    answers: list[Answered] = field(default_factory=list)

    async def __call__(self, request_id: str, answer: Answered, latency_s: float) -> None:
        self.answers.append(answer)


@dataclass
class Counted:
    account: Account
    metrics: GatewayMetrics
    kept: Kept

    def outcomes(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for metric in self.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == "twice_requests_total" and sample.value:
                    found[sample.labels["outcome"]] = sample.value
        return found

    def tokens(self, kind: str) -> float:
        return self.metrics.registry.get_sample_value("twice_tokens_total", {"kind": kind}) or 0.0

    def first_tokens(self) -> float:
        labels = {"variant": self.account.variant}
        return (
            self.metrics.registry.get_sample_value("twice_time_to_first_token_seconds_count", labels) or 0.0
        )


def counted(*, stream: bool, keeps: bool = True) -> Counted:
    metrics = GatewayMetrics(CollectorRegistry())
    account = Account(metrics)
    account.stream = stream
    account.request_id = "chatcmpl-gateway"
    kept = Kept()
    if keeps:
        account.keeper = kept
    return Counted(account, metrics, kept)


@dataclass
class Sent:
    """What the client received: status, raw header lines, and each body part."""

    status: int = 0
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    parts: list[bytes] = field(default_factory=list)

    def header(self, name: str) -> list[str]:
        """Every value of `name` sent (a header sent twice gives two)."""
        key = name.lower().encode()
        return [value.decode() for found, value in self.raw_headers if found == key]

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)


async def deliver(response: Response, *, leave_after: int | None = None) -> Sent:
    """Send `response` to a client as uvicorn does (ASGI spec 2.3); `leave_after`: the client goes away once
    that many body parts have arrived."""
    sent = Sent()
    left = asyncio.Event()

    async def receive() -> Message:
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            sent.status = message["status"]
            sent.raw_headers = list(message["headers"])
        elif message.get("body"):
            sent.parts.append(message["body"])
            if leave_after is not None and len(sent.parts) >= leave_after:
                left.set()

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "method": "POST",
        "path": PATH,
    }
    await response(scope, receive, send)
    return sent


GATEWAY_HEADERS = Envelope("chatcmpl-gateway", 1_700_000_000, "stub-model").headers("none")


async def forwarded(
    backend: ForwardingBackend, *, stream: bool, keeps: bool = True, leave_after: int | None = None
) -> tuple[Sent, Counted]:
    """One pass-through request, sent to its client; a JSON answer's account closed as its route does."""
    count = counted(stream=stream, keeps=keeps)
    response = await forward_chat(
        backend, request_body(stream=stream), stream=stream, headers=GATEWAY_HEADERS, account=count.account
    )
    sent = await deliver(response, leave_after=leave_after)
    if not stream or not sent.header("content-type")[0].startswith("text/event-stream"):
        await count.account.close("ok")
    return sent, count


def data_of(body: bytes) -> list[Any]:
    """The payloads of a relayed stream's events, [DONE] as the string."""
    payloads: list[Any] = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block.removeprefix(b"data: ")
            payloads.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return payloads


# --- what goes to vLLM -------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_the_clients_bytes_reach_vllm_unchanged(
    backend: VllmBackend, upstream: Upstream, stream: bool
) -> None:
    if stream:
        upstream.answer = sse(*STREAM)
    await forwarded(backend, stream=stream)
    assert upstream.bodies == [request_body(stream=stream)]


async def test_vllm_gets_a_fresh_routing_key_and_none_of_the_gateways_response_headers(
    backend: VllmBackend, upstream: Upstream
) -> None:
    await forwarded(backend, stream=False)
    await forwarded(backend, stream=False)
    keys = [headers[ROUTING_HEADER.lower()] for headers in upstream.headers]
    assert all(len(key) == 32 and set(key) <= set("0123456789abcdef") for key in keys)
    assert keys[0] != keys[1]  # each pass-through request may go to any upstream
    assert upstream.headers[0]["content-type"] == "application/json"
    assert (
        not {REQUEST_ID_HEADER.lower(), APPLIED_HEADER.lower(), "authorization"} & upstream.headers[0].keys()
    )


async def test_vllm_gets_the_gateways_key_when_it_needs_one(upstream: Upstream) -> None:
    keyed = VllmBackend(VllmSettings(upstream=upstream.url, model="stub-model", api_key="sk-vllm-only"))
    await keyed.start()
    try:
        await forwarded(keyed, stream=False)
    finally:
        await keyed.close()
    assert upstream.headers[0]["authorization"] == "Bearer sk-vllm-only"


# --- a whole answer ----------------------------------------------------------------------------------------


async def test_a_json_answer_is_relayed_byte_for_byte_and_read_once_for_the_account(
    backend: VllmBackend, upstream: Upstream
) -> None:
    sent, count = await forwarded(backend, stream=False)
    assert sent.status == 200
    assert sent.body == upstream.answer.body
    assert sent.header("content-length") == [str(len(upstream.answer.body))]
    assert sent.header("content-type") == ["application/json"]
    assert sent.header(REQUEST_ID_HEADER) == ["chatcmpl-gateway"]
    assert sent.header(APPLIED_HEADER) == ["none"]
    assert [(a.text, a.finish_reason, a.tokens(), a.plain) for a in count.kept.answers] == [
        ("Hello", "stop", (7, 3), True)
    ]
    assert (count.tokens("prompt"), count.tokens("completion")) == (7, 3)
    assert count.first_tokens() == 0  # a JSON body has no first token


async def test_vllms_own_headers_are_relayed_and_hop_by_hop_ones_are_not(
    backend: VllmBackend, upstream: Upstream
) -> None:
    upstream.answer.headers.update({"X-Vllm-Trace": "t-1", "Keep-Alive": "timeout=5", "Server": "uvicorn"})
    sent, _ = await forwarded(backend, stream=False)
    assert sent.header("x-vllm-trace") == ["t-1"]
    assert sent.header("keep-alive") == []
    assert sent.header("server") == []  # the gateway's own server writes its own
    assert sent.header("date") == []


@pytest.mark.parametrize("stream", [False, True])
async def test_a_header_value_outside_latin_1_is_relayed_as_the_bytes_vllm_sent(
    backend: VllmBackend, upstream: Upstream, stream: bool
) -> None:
    """HTTP header values are bytes; Starlette writes str values as latin-1, so a UTF-8 value that aiohttp
    decoded used to make building the response raise (a 500 for a valid answer)."""
    upstream.answer = sse(*STREAM) if stream else Answer(body=completion())
    upstream.answer.headers["X-Vllm-Note"] = "café €"
    sent, _ = await forwarded(backend, stream=stream)
    assert sent.status == 200
    assert (b"x-vllm-note", "café €".encode()) in sent.raw_headers


@pytest.mark.parametrize("stream", [False, True])
async def test_a_header_vllm_repeats_is_relayed_as_often_as_it_was_sent(
    backend: VllmBackend, upstream: Upstream, stream: bool
) -> None:
    upstream.answer = sse(*STREAM) if stream else Answer(body=completion())
    upstream.answer.headers = CIMultiDict(upstream.answer.headers)
    upstream.answer.headers.add("Set-Cookie", "a=1")
    upstream.answer.headers.add("Set-Cookie", "b=2")
    sent, _ = await forwarded(backend, stream=stream)
    assert sent.header("set-cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_header_the_gateway_sets_is_sent_once_with_the_gateways_value(
    backend: VllmBackend, upstream: Upstream, stream: bool
) -> None:
    """vLLM's lower-case copy of a header the gateway writes itself is not relayed beside it."""
    copies = {
        "x-twice-request-id": "chatcmpl-upstream",
        "x-twice-strategy-applied": "psr",
        "cache-control": "no-store",
        "x-accel-buffering": "yes",
    }
    upstream.answer = sse(*STREAM) if stream else Answer(body=completion())
    upstream.answer.headers.update(copies)
    sent, _ = await forwarded(backend, stream=stream)
    assert sent.header(REQUEST_ID_HEADER) == ["chatcmpl-gateway"]
    assert sent.header(APPLIED_HEADER) == ["none"]
    assert len(sent.header("content-type")) == 1
    assert len(sent.header("content-length")) == (0 if stream else 1)
    if stream:
        assert (sent.header("cache-control"), sent.header("x-accel-buffering")) == (["no-cache"], ["no"])
    else:
        assert (sent.header("cache-control"), sent.header("x-accel-buffering")) == (["no-store"], ["yes"])
    names = [name for name, _ in sent.raw_headers]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_a_client_error_is_relayed_with_its_status_and_body_and_counts_no_answer(
    backend: VllmBackend, upstream: Upstream, status: int
) -> None:
    error = orjson.dumps(
        {"error": {"message": "bad 'n'", "type": "BadRequestError", "param": "n", "code": 400}}
    )
    upstream.answer = Answer(status=status, body=error)
    sent, count = await forwarded(backend, stream=False)
    assert (sent.status, sent.body) == (status, error)
    assert count.kept.answers == []
    assert count.tokens("prompt") == 0


async def test_an_error_answer_to_a_stream_request_is_relayed_whole(
    backend: VllmBackend, upstream: Upstream
) -> None:
    error = orjson.dumps({"error": {"message": "The model `x` does not exist.", "code": 404}})
    upstream.answer = Answer(status=404, body=error)
    sent, count = await forwarded(backend, stream=True)
    assert (sent.status, sent.body) == (404, error)
    assert sent.header("content-type") == ["application/json"]
    assert sent.header("cache-control") == []
    assert count.kept.answers == []


async def test_a_stream_not_asked_for_is_relayed_whole_and_never_kept(
    backend: VllmBackend, upstream: Upstream
) -> None:
    upstream.answer = sse(*STREAM)
    sent, count = await forwarded(backend, stream=False)
    assert sent.body == b"".join(STREAM)
    assert count.kept.answers == []  # not a chat.completion: nothing to keep


@pytest.mark.parametrize(
    ("body", "plain"),
    [
        (completion(None, tool_calls=[{"id": "c", "type": "function", "function": {"name": "f"}}]), False),
        (b'{"id": "x", "choices": [{"mess', None),
        (b"[]", None),
        (completion().replace(b'"finish_reason": "stop"', b'"finish_reason": 1'), False),
    ],
    ids=["tool-calls", "cut-json", "not-an-object", "finish-reason-not-a-string"],
)
async def test_a_json_answer_that_is_not_one_plain_text_is_relayed_but_not_kept_as_one(
    backend: VllmBackend, upstream: Upstream, body: bytes, plain: bool | None
) -> None:
    upstream.answer = Answer(body=body)
    sent, count = await forwarded(backend, stream=False)
    assert (sent.status, sent.body) == (200, body)
    assert [answer.plain for answer in count.kept.answers] == ([] if plain is None else [plain])


async def test_a_malformed_usage_is_no_usage(backend: VllmBackend, upstream: Upstream) -> None:
    upstream.answer = Answer(body=completion(usage={"prompt_tokens": "many"}))
    sent, count = await forwarded(backend, stream=False)
    assert sent.status == 200
    assert [answer.usage for answer in count.kept.answers] == [None]
    assert count.tokens("prompt") == 0


# --- a stream ----------------------------------------------------------------------------------------------


async def test_a_stream_is_relayed_event_by_event_byte_for_byte(
    backend: VllmBackend, upstream: Upstream
) -> None:
    upstream.answer = sse(*STREAM, pause_s=0.01)
    sent, count = await forwarded(backend, stream=True)
    assert sent.status == 200
    assert sent.body == b"".join(STREAM)
    assert sent.parts == list(STREAM)  # each event passed as it came, not gathered
    assert sent.header("content-type") == ["text/event-stream"]
    assert sent.header("cache-control") == ["no-cache"]
    assert sent.header("x-accel-buffering") == ["no"]
    assert sent.header(REQUEST_ID_HEADER) == ["chatcmpl-gateway"]
    assert sent.header("content-length") == []
    assert count.outcomes() == {"ok": 1}
    assert count.first_tokens() == 1
    assert [(a.text, a.finish_reason, a.tokens(), a.complete) for a in count.kept.answers] == [
        ("Hello", "stop", (7, 3), True)
    ]


async def test_events_cut_anywhere_by_the_network_are_relayed_whole(
    backend: VllmBackend, upstream: Upstream
) -> None:
    whole = b"".join(STREAM).replace(b"\n", b"\r\n")  # CRLF line ends are events too
    pieces = tuple(whole[at : at + 7] for at in range(0, len(whole), 7))
    upstream.answer = sse(*pieces, pause_s=0.002)
    sent, count = await forwarded(backend, stream=True)
    assert sent.body == whole
    assert all(part.endswith(b"\r\n\r\n") for part in sent.parts)
    assert [(a.text, a.tokens()) for a in count.kept.answers] == [("Hello", (7, 3))]


async def test_usage_is_read_from_the_relayed_events_when_the_text_is_not_wanted(
    backend: VllmBackend, upstream: Upstream
) -> None:
    upstream.answer = sse(*STREAM)
    sent, count = await forwarded(backend, stream=True, keeps=False)
    assert sent.body == b"".join(STREAM)
    assert count.outcomes() == {"ok": 1}
    assert (count.tokens("prompt"), count.tokens("completion")) == (7, 3)


@pytest.mark.parametrize(
    "events",
    [
        (chunk("a"), chunk("b", index=1), chunk(finish="stop"), USAGE_EVENT, DONE),
        (chunk(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f"}}]), USAGE_EVENT, DONE),
        (chunk("a"), event({"error": {"message": "vLLM failed mid-way", "code": 500}}), DONE),
        (chunk("a"), event({"choices": [{"index": 0, "delta": {}, "finish_reason": {"x": 1}}]}), DONE),
    ],
    ids=["two-choices", "tool-calls", "error-event", "finish-reason-not-a-string"],
)
async def test_a_stream_that_is_not_one_plain_text_is_relayed_whole_but_never_kept(
    backend: VllmBackend, upstream: Upstream, events: tuple[bytes, ...]
) -> None:
    upstream.answer = sse(*events)
    sent, count = await forwarded(backend, stream=True)
    assert sent.body == b"".join(events)
    assert count.outcomes() == {"ok": 1}
    assert count.kept.answers == []


@pytest.mark.parametrize(
    "odd",
    [
        b": a comment only\n\n",
        b"event: ping\nid: 4\nretry: 100\n\n",
        b"data: [1, 2]\n\n",
        b'data: "text"\n\n',
        b"data: not json\n\n",
        event({"id": "chatcmpl-up", "object": "chat.completion.chunk"}),
        event({"choices": None, "usage": None}),
        event({"choices": {"0": {"delta": {}}}}),
        event({"choices": 5}),
        event({"choices": [None, 1, "two"]}),
        event({"choices": [{"index": 0, "delta": "text", "finish_reason": None}]}),
        event({"choices": [None], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}),
    ],
    ids=[
        "comment",
        "fields",
        "array",
        "string",
        "not-json",
        "no-choices",
        "nulls",
        "choices-object",
        "choices-number",
        "choices-not-objects",
        "delta-string",
        "usage-beside-odd-choices",
    ],
)
@pytest.mark.parametrize("keeps", [True, False], ids=["every-event", "usage-only"])
async def test_an_odd_but_valid_event_is_relayed_and_the_stream_goes_on(
    backend: VllmBackend, upstream: Upstream, odd: bytes, keeps: bool
) -> None:
    events = (chunk("Hel"), odd, chunk("lo", "stop"), USAGE_EVENT, DONE)
    upstream.answer = sse(*events)
    sent, count = await forwarded(backend, stream=True, keeps=keeps)
    assert sent.body == b"".join(events)
    assert count.outcomes() == {"ok": 1}
    assert count.tokens("prompt") == 7


# --- failures ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [500, 503])
async def test_a_5xx_is_an_upstream_error_that_never_shows_vllms_body(
    backend: VllmBackend, upstream: Upstream, stream: bool, status: int
) -> None:
    upstream.answer = Answer(
        status=status, body=b'{"error": {"message": "CUDA OOM at /opt/secret"}}', stream=stream, chunks=()
    )
    count = counted(stream=stream)
    with pytest.raises(UpstreamError) as raised:
        await forward_chat(
            backend,
            request_body(stream=stream),
            stream=stream,
            headers=GATEWAY_HEADERS,
            account=count.account,
        )
    error = raised.value
    assert error.status_code == 502
    assert error.body() == {
        "error": {
            "message": f"The model backend answered {status}.",
            "type": "upstream_error",
            "param": None,
            "code": "bad_gateway",
        }
    }


@pytest.mark.parametrize(
    ("before", "failure", "status", "error_type"),
    [("reset", BackendUnavailable, 503, "service_unavailable"), ("hang", BackendTimeout, 504, "timeout")],
)
async def test_no_answer_at_all_raises_the_backend_error_its_route_shows_as_openai_error(
    backend: VllmBackend,
    upstream: Upstream,
    before: str,
    failure: type[Exception],
    status: int,
    error_type: str,
) -> None:
    upstream.answer = Answer(before=before)
    count = counted(stream=True)
    with pytest.raises(failure) as raised:
        await forward_chat(
            backend, request_body(stream=True), stream=True, headers=GATEWAY_HEADERS, account=count.account
        )
    shown = as_twice_error(raised.value)
    assert shown.status_code == status
    assert shown.body()["error"]["type"] == error_type
    assert "127.0.0.1" not in shown.message


async def test_a_refused_connection_is_backend_unavailable() -> None:
    nowhere = VllmBackend(
        VllmSettings(upstream=f"http://127.0.0.1:{free_port()}", model="stub-model", retries=0)
    )
    await nowhere.start()
    try:
        with pytest.raises(BackendUnavailable, match="cannot connect"):
            await forwarded(nowhere, stream=False)
    finally:
        await nowhere.close()


@pytest.mark.parametrize(
    ("then", "tail", "message", "error_type", "code"),
    [
        ("end", b"", "The model backend ended the stream before [DONE].", "upstream_error", "bad_gateway"),
        (
            "end",
            b'data: {"choices": [{"del',
            "The model backend ended the stream inside an event.",
            "upstream_error",
            "bad_gateway",
        ),
        ("reset", b"", "The model backend is unavailable.", "service_unavailable", "backend_unavailable"),
        ("hang", b"", "The model backend did not answer in time.", "timeout", "backend_timeout"),
    ],
    ids=["no-done", "inside-an-event", "reset", "read-timeout"],
)
async def test_a_stream_broken_mid_way_ends_with_an_error_event_and_done(
    backend: VllmBackend, upstream: Upstream, then: str, tail: bytes, message: str, error_type: str, code: str
) -> None:
    upstream.answer = sse(chunk("Hel"), chunk("lo"), tail, then=then)
    sent, count = await forwarded(backend, stream=True)
    assert sent.status == 200
    assert sent.body.startswith(chunk("Hel") + chunk("lo"))
    *_, error, done = data_of(sent.body)
    assert error == {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    assert done == "[DONE]"
    assert b'{"del' not in sent.body  # half an event is never relayed
    assert count.outcomes() == {"backend_error": 1}
    assert count.kept.answers == []


async def test_a_client_that_leaves_mid_stream_closes_the_upstream_call_and_counts_cancelled(
    backend: VllmBackend, upstream: Upstream
) -> None:
    upstream.answer = answer = sse(*(chunk(f"t{n}") for n in range(40)), pause_s=0.02)
    sent, count = await forwarded(backend, stream=True, leave_after=2)
    assert 2 <= len(sent.parts) < 40
    assert count.outcomes() == {"cancelled": 1}
    assert count.kept.answers == []
    for _ in range(100):
        if any(aborted is answer for aborted in upstream.aborted):
            break
        await asyncio.sleep(0.02)
    assert any(aborted is answer for aborted in upstream.aborted)
