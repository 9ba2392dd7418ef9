"""Server-sent events as the OpenAI streaming API writes them: `data: <json>\\n\\n`, then `data: [DONE]`."""

from __future__ import annotations

from typing import Any

import orjson

from app.errors import TwiceError

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_error(error: TwiceError) -> bytes:
    """The final event of a stream that failed after it started (the status line has gone already)."""
    return sse_event(error.body())
