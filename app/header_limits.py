"""Bounds on request headers, checked before any route runs (the body has its own, in app/requests.py).

The HTTP server accepts headers of any size it can parse; without these bounds a 100,000-byte header value
was read, logged and served. Too many or too large headers get 431 and an OpenAI error object.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import HeadersTooLarge, error_response
from app.settings import LimitSettings


def header_problem(headers: Iterable[tuple[bytes, bytes]], limits: LimitSettings) -> str | None:
    """Why these headers are refused, or None when they are within the limits."""
    count = total = 0
    for name, value in headers:
        size = len(name) + len(value)
        if size > limits.max_header_field_bytes:
            shown = name.decode("latin-1")[:64]
            limit = limits.max_header_field_bytes
            return f"Request header {shown!r} is larger than the limit of {limit} bytes."
        count += 1
        total += size
    if count > limits.max_headers:
        return f"Too many request headers: {count} > {limits.max_headers}."
    if total > limits.max_header_bytes:
        return f"Request headers are larger than the limit of {limits.max_header_bytes} bytes in all."
    return None


class HeaderLimits:
    """ASGI middleware: HTTP requests whose headers break `limits` are answered 431 and go no further."""

    def __init__(self, app: ASGIApp, limits: LimitSettings) -> None:
        self._app = app
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = header_problem(scope["headers"], self._limits)
            if problem is not None:
                await error_response(HeadersTooLarge(problem))(scope, receive, send)
                return
        await self._app(scope, receive, send)
