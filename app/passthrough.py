"""The pass-through path: a request no strategy touches goes to vLLM as the client's bytes, and vLLM's answer
comes back as its bytes. Nothing is re-encoded; a stream is relayed event by event as it arrives.

Only whole SSE events are relayed (the vLLM client's `Relayed.events`), so a failure mid-stream can still end
the stream with a well-formed final error event.

This is the one path whose answer is known only as bytes: what the request's account needs of it (text,
finish reason, usage) is read here, from the event payloads the one SSE reader gives (`event_data`), or from
the one JSON parse of a whole body. A stream's every event is parsed only while the account keeps answers
(the cache, an experiment, token limits); otherwise only the events that carry usage are.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol, runtime_checkable

import orjson
from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse

from app.account import Account, Answered
from app.backends.vllm import Relayed, StreamCut, event_data
from app.errors import UpstreamError, as_twice_error
from app.protocol.chat import UsageInfo
from app.render import DONE, SSE_HEADERS, error_event
from refiners.backend import BackendError


@runtime_checkable
class ForwardingBackend(Protocol):
    async def forward(
        self, path: str, body: bytes, *, stream: bool, headers: dict[str, str] | None = None
    ) -> Relayed: ...


async def forward_chat(
    backend: ForwardingBackend, body: bytes, *, stream: bool, headers: dict[str, str], account: Account
) -> Response:
    relayed = await backend.forward("/v1/chat/completions", body, stream=stream)
    if relayed.status >= 500:
        raise UpstreamError(f"The model backend answered {relayed.status}.")
    if relayed.events is None:
        if relayed.status == 200:
            account.relayed(read_body(relayed.body))
        response = Response(relayed.body, status_code=relayed.status, headers=headers)
    else:
        response = StreamingResponse(
            _relay_events(relayed.events, account),
            status_code=200,
            headers={**headers, **SSE_HEADERS},  # the Content-Type is vLLM's (an event stream's)
        )
    _add_relayed(response, relayed.headers)
    return response


def _add_relayed(response: Response, relayed: Sequence[tuple[str, str]]) -> None:
    """vLLM's headers, each as often as it was sent, less those the response already has, whatever their
    case (vLLM's lower-case copy of a header the gateway sets would be sent beside the gateway's)."""
    own = {name for name, _ in response.raw_headers}  # Starlette keeps names lower-case, latin-1
    for name, value in relayed:
        key = name.lower().encode("latin-1")
        if key not in own:
            response.raw_headers.append((key, value.encode("latin-1")))


async def _relay_events(events: AsyncGenerator[bytes, None], account: Account) -> AsyncGenerator[bytes, None]:
    reader = StreamReader(every_event=account.keeps_answers)
    first = True
    outcome = "cancelled"
    try:
        async for ready in events:
            if first:
                account.first_text()
                first = False
            reader.feed(ready)
            yield ready
        outcome = "ok"
    except BackendError as exc:
        outcome = "backend_error"
        yield error_event(UpstreamError(str(exc)) if isinstance(exc, StreamCut) else as_twice_error(exc))
        yield DONE
    finally:
        await events.aclose()
        account.relayed(reader.answer())
        await account.close(outcome)


def _usage(value: Any) -> UsageInfo | None:
    if not isinstance(value, dict):
        return None
    try:
        return UsageInfo.model_validate(value)
    except ValidationError:
        return None


def read_body(body: bytes) -> Answered:
    """What a whole relayed `chat.completion` said; not plain (never cached) when it is not one answer of
    assistant text."""
    try:
        payload = orjson.loads(body)
        choices = payload["choices"]
        message = choices[0]["message"]
        content = message.get("content")
        finish_reason = choices[0].get("finish_reason")
        plain = (
            len(choices) == 1
            and isinstance(content, str)
            and not message.get("tool_calls")
            and isinstance(finish_reason, str | None)
        )
        return Answered(
            content if isinstance(content, str) else "",
            finish_reason if isinstance(finish_reason, str) else None,
            _usage(payload.get("usage")),
            plain=plain,
        )
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return Answered("", None, None, complete=False, plain=False)


class StreamReader:
    """What a relayed stream said, read event by event as the events pass. `every_event`: read the text and
    finish reason too (each event parsed); else only the usage (only events that carry it parsed)."""

    __slots__ = ("_done", "_every_event", "_finish_reason", "_parts", "_plain", "_usage")

    def __init__(self, *, every_event: bool) -> None:
        self._every_event = every_event
        self._parts: list[str] = []
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self._plain = True
        self._done = False

    def feed(self, events: bytes) -> None:
        """`events`: whole events, as relayed."""
        if self._every_event:
            for data in event_data(events):
                self._read(data)
        elif b'"usage"' in events:
            for data in event_data(events):
                if b'"usage"' in data:
                    self._read(data)

    def answer(self) -> Answered:
        return Answered(
            "".join(self._parts),
            self._finish_reason,
            _usage(self._usage),
            complete=self._every_event and self._done and self._plain,
            plain=self._plain,
        )

    def _read(self, data: bytes) -> None:
        if data == b"[DONE]":
            self._done = True
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._plain = False
            return
        if not isinstance(event, dict) or "error" in event:
            self._plain = False
            return
        if event.get("usage"):
            self._usage = event["usage"]
        choices = event.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(choice, dict) for choice in choices):
            self._plain = False  # not a chunk this reader understands: relayed all the same, never kept
            return
        if len(choices) > 1 or any(choice.get("index", 0) for choice in choices):
            self._plain = False
        for choice in choices:
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                self._plain = False
                continue
            if delta.get("tool_calls"):
                self._plain = False
            if isinstance(delta.get("content"), str):
                self._parts.append(delta["content"])
            finish_reason = choice.get("finish_reason")
            if isinstance(finish_reason, str) and finish_reason:
                self._finish_reason = finish_reason
            elif finish_reason is not None:
                self._plain = False  # a finish reason no client expects: relayed, never kept
