"""`VllmBackend.stream` reads vLLM's events with the shared reader (app/backends/vllm/sse.py), against
loopback servers sending scripted bytes: line endings, events cut across writes, multi-line data, [DONE]."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from app.backends.vllm import StreamCut, VllmBackend
from app.settings import VllmSettings
from refiners.backend import ChatMessage, CompletionChunk, GenerationRequest, Sampling, Usage
from tests.support.loopback import serving_app

REQUEST = GenerationRequest((ChatMessage("user", "Say hello."),), Sampling(max_tokens=8))
HELLO = [
    b'data: {"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"length"}]}\n\n',
    b": keep-alive\n\n",
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n',
]
DONE = b"data: [DONE]\n\n"
HELLO_CHUNKS = [
    CompletionChunk(text="Hel"),
    CompletionChunk(text="lo"),
    CompletionChunk(text="", finish_reason="length", usage=Usage(prompt_tokens=3, completion_tokens=2)),
]


def scripted(*steps: bytes | float, end: bool = True) -> web.Application:
    """An upstream answering every chat call with `steps`: bytes written as they are, floats as pauses (so the
    bytes before arrive alone); then the end of the body, or (`end=False`) an open connection."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for step in steps:
            if isinstance(step, float):
                await asyncio.sleep(step)
            else:
                await response.write(step)
        if not end:
            await asyncio.sleep(30)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def streamed(app: web.Application, read_timeout_s: float = 5.0) -> AsyncIterator[CompletionChunk]:
    with serving_app(app, handler_cancellation=True, shutdown_timeout=1.0) as url:
        backend = VllmBackend(VllmSettings(upstream=url, model="m", read_timeout_s=read_timeout_s))
        await backend.start()
        try:
            async for chunk in backend.stream(REQUEST):
                yield chunk
        finally:
            await backend.close()


async def collect(app: web.Application) -> list[CompletionChunk]:
    return [chunk async for chunk in streamed(app)]


def cut_everywhere(events: bytes, pause: float = 0.01) -> list[bytes | float]:
    """`events` written in pieces of 7 bytes, cutting lines, blank lines and CRLF pairs."""
    steps: list[bytes | float] = []
    for start in range(0, len(events), 7):
        steps += [events[start : start + 7], pause]
    return steps


async def test_events_cut_across_writes_give_the_same_chunks() -> None:
    assert await collect(scripted(*cut_everywhere(b"".join([*HELLO, DONE])))) == HELLO_CHUNKS


async def test_crlf_events_give_the_same_chunks() -> None:
    crlf = b"".join([*HELLO, DONE]).replace(b"\n", b"\r\n")
    assert await collect(scripted(*cut_everywhere(crlf))) == HELLO_CHUNKS


async def test_multi_line_data_is_one_event() -> None:
    split_json = b'data: {"choices":\ndata: [{"index":0,"delta":{"content":"two lines"}}]}\n\n'
    chunks = await collect(scripted(split_json, DONE))
    assert [c.text for c in chunks] == ["two lines", ""]


async def test_done_ends_the_stream_while_the_connection_stays_open() -> None:
    started = time.monotonic()
    assert await collect(scripted(*HELLO, DONE, end=False)) == HELLO_CHUNKS
    assert time.monotonic() - started < 2.5


async def test_a_stream_ending_without_done_raises_after_its_chunks() -> None:
    received: list[CompletionChunk] = []

    async def read_all() -> None:
        async for chunk in streamed(scripted(*HELLO)):
            received.append(chunk)

    with pytest.raises(StreamCut, match=r"before \[DONE\]"):
        await read_all()
    assert received == HELLO_CHUNKS[:2]
