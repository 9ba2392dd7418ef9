"""Reading what a response said (answer text, finish reason, usage) from its bytes, JSON or SSE.

The gateway's own responses and vLLM's relayed ones share the OpenAI wire format, so one reader serves the
cache, the experiment counters and the token limits whichever path produced the answer. A stream is read as it
passes through, without holding it back.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass
class Captured:
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    plain: bool = True
    """Only an assistant text answer to one choice can be replayed from the cache."""
    complete: bool = False
    """The response ended normally (a JSON body, or a stream that reached [DONE] without an error event)."""

    @property
    def content(self) -> str:
        return "".join(self.parts)

    def tokens(self) -> tuple[int, int] | None:
        if not isinstance(self.usage, dict):
            return None
        try:
            return int(self.usage.get("prompt_tokens") or 0), int(self.usage.get("completion_tokens") or 0)
        except (TypeError, ValueError):
            return None


def capture_json(body: bytes) -> Captured:
    captured = Captured()
    try:
        payload = orjson.loads(body)
        choices = payload["choices"]
        captured.usage = payload.get("usage")
        message = choices[0]["message"]
        captured.finish_reason = choices[0].get("finish_reason")
        content = message.get("content")
        captured.plain = len(choices) == 1 and isinstance(content, str) and not message.get("tool_calls")
        captured.parts.append(content if isinstance(content, str) else "")
        captured.complete = True
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        captured.plain = False
    return captured


def _read_event(data: bytes, captured: Captured) -> None:
    if data == b"[DONE]":
        captured.complete = captured.plain
        return
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        captured.plain = False
        return
    if not isinstance(event, dict) or "error" in event:
        captured.plain = False
        return
    if event.get("usage"):
        captured.usage = event["usage"]
    choices = event.get("choices") or []
    if len(choices) > 1 or any(c.get("index", 0) for c in choices):
        captured.plain = False
    for choice in choices:
        delta = choice.get("delta") or {}
        if delta.get("tool_calls"):
            captured.plain = False
        if isinstance(delta.get("content"), str):
            captured.parts.append(delta["content"])
        if choice.get("finish_reason"):
            captured.finish_reason = choice["finish_reason"]


async def capture_stream(
    events: AsyncIterable[str | bytes | memoryview], on_done: Callable[[Captured], Awaitable[None]]
) -> AsyncIterator[str | bytes | memoryview]:
    """Relay `events` unchanged; once they end, hand what they said to `on_done`."""
    captured = Captured()
    pending = b""
    async for chunk in events:
        yield chunk
        pending += chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        *complete, pending = pending.split(b"\n\n")
        for event in complete:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    _read_event(line[5:].strip(), captured)
    await on_done(captured)
