"""The one renderer of chat answers: text events in, an OpenAI JSON body or SSE stream out.

A fresh answer (a run's events), a cached answer (its entry's text, replayed as events) and a stream that
fails after it started all go through here, so every chunk is one `ChatCompletionChunk` and every body one
`ChatCompletion` (app/protocol/chat.py). Whoever counts the request listens (`Listener`): the renderer tells
it when the first text went out, what the answer said, and, for a stream, how the stream ended.

A stream is: a role chunk, a content chunk per text event, the final chunk (finish reason and the `twice`
object), the usage chunk when asked, `data: [DONE]`. A failure after the first byte ends it with an error
event and `[DONE]` (the status line has gone already).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from starlette.responses import Response, StreamingResponse

from app.errors import TwiceError, as_twice_error
from app.protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    ChunkDelta,
    UsageInfo,
)
from refiners.base import GenerationEvent, TextPiece

log = logging.getLogger("twice.render")

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
REQUEST_ID_HEADER = "X-Twice-Request-Id"
APPLIED_HEADER = "X-Twice-Strategy-Applied"


@dataclass(frozen=True, slots=True)
class Envelope:
    """What every chunk and body of one response shares."""

    request_id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> Envelope:
        # 32 random hex digits, as uuid4().hex gave, without building a UUID (a third of the cost).
        return cls(f"chatcmpl-{secrets.token_hex(16)}", int(time.time()), model)

    def headers(self, applied: str) -> dict[str, str]:
        """The response headers every answer carries; `applied`: the strategies that wrote it, or none."""
        return {REQUEST_ID_HEADER: self.request_id, APPLIED_HEADER: applied}


@dataclass(frozen=True, slots=True)
class Ending:
    """What closes an answer once its text is out: why it ended, its usage (None when unknown), the `twice`
    object."""

    finish_reason: str
    usage: UsageInfo | None
    twice: dict[str, Any]


class AnswerSource(Protocol):
    """An answer to render: a run (fresh) or a cached entry (replay)."""

    def events(self) -> AsyncIterator[GenerationEvent]: ...

    def ending(self, finished_reason: str | None, visible_tokens: int) -> Ending:
        """Called once the events end; `finished_reason` and `visible_tokens` from their `Finished`
        (None and 0 when they had none)."""
        ...


class Listener(Protocol):
    """Who counts the request (its account)."""

    def first_text(self) -> None: ...

    def answered(self, text: str, ending: Ending) -> None: ...

    async def close(self, outcome: str) -> None:
        """A stream has ended: `ok`, `cancelled`, `backend_error` or `server_error`."""
        ...


def sse_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def error_event(error: TwiceError) -> bytes:
    """The final event of a stream that failed after it started."""
    return sse_event(orjson.dumps(error.body()))


def stream_outcome(error: TwiceError) -> str:
    return "backend_error" if error.status_code in (502, 503, 504) else "server_error"


def json_response(body: bytes, headers: dict[str, str]) -> Response:
    return Response(body, media_type="application/json", headers=headers)


def stream_response(events: AsyncIterator[bytes], headers: dict[str, str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})


class _Chunks:
    """The chunks of one streamed answer."""

    __slots__ = ("_envelope",)

    def __init__(self, envelope: Envelope) -> None:
        self._envelope = envelope

    def _chunk(
        self, choices: list[ChunkChoice], usage: UsageInfo | None = None, twice: dict[str, Any] | None = None
    ) -> bytes:
        env = self._envelope
        chunk = ChatCompletionChunk(
            id=env.request_id, created=env.created, model=env.model, choices=choices, usage=usage, twice=twice
        )
        return sse_event(chunk.model_dump_json().encode())

    def delta(self, delta: ChunkDelta) -> bytes:
        return self._chunk([ChunkChoice(delta=delta)])

    def final(self, ending: Ending) -> bytes:
        return self._chunk(
            [ChunkChoice(delta=ChunkDelta(), finish_reason=ending.finish_reason)], twice=ending.twice
        )

    def usage(self, usage: UsageInfo) -> bytes:
        return self._chunk([], usage=usage)


async def _read(source: AnswerSource) -> tuple[str, Ending]:
    parts: list[str] = []
    reason: str | None = None
    visible = 0
    async for event in source.events():
        if isinstance(event, TextPiece):
            parts.append(event.text)
        else:
            reason, visible = event.finish_reason, event.visible_tokens
    return "".join(parts), source.ending(reason, visible)


async def render_json(envelope: Envelope, source: AnswerSource, listener: Listener) -> bytes:
    """The whole answer as one `chat.completion` body; a failure is raised (for the one error handler)."""
    text, ending = await _read(source)
    listener.answered(text, ending)
    body = ChatCompletion(
        id=envelope.request_id,
        created=envelope.created,
        model=envelope.model,
        choices=[Choice(message=AssistantMessage(content=text), finish_reason=ending.finish_reason)],
        usage=ending.usage,
        twice=ending.twice,
    )
    return body.model_dump_json(exclude_none=True).encode()


async def render_stream(
    envelope: Envelope, source: AnswerSource, listener: Listener, *, include_usage: bool
) -> AsyncIterator[bytes]:
    """The answer as server-sent events while its text arrives; the listener is closed when it ends."""
    chunks = _Chunks(envelope)
    outcome = "cancelled"
    try:
        yield chunks.delta(ChunkDelta(role="assistant", content=""))
        parts: list[str] = []
        reason: str | None = None
        visible = 0
        async for event in source.events():
            if not isinstance(event, TextPiece):
                reason, visible = event.finish_reason, event.visible_tokens
            elif event.text:
                if not parts:
                    listener.first_text()
                parts.append(event.text)
                yield chunks.delta(ChunkDelta(content=event.text))
        ending = source.ending(reason, visible)
        listener.answered("".join(parts), ending)
        yield chunks.final(ending)
        if include_usage and ending.usage is not None:
            yield chunks.usage(ending.usage)
        outcome = "ok"
        yield DONE
    except Exception as exc:
        error = as_twice_error(exc)
        if error.status_code >= 500:
            log.warning("stream %s failed after it started: %s", envelope.request_id, type(exc).__name__)
        outcome = stream_outcome(error)
        yield error_event(error)
        yield DONE
    finally:
        await listener.close(outcome)
