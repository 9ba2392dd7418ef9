"""Turning a request body into something the gateway can act on, within the configured limits."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request

from app.errors import InvalidRequest, PayloadTooLarge, validation_error
from app.protocol.chat import ChatCompletionRequest
from app.settings import LimitSettings

log = logging.getLogger("twice.requests")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes `limit` bytes, whatever Content-Length says."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def load_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return payload


def check_limits(payload: Mapping[str, Any], limits: LimitSettings) -> None:
    """Bounds that hold on every path, the pass-through included."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages", code="invalid_value")
    if len(messages) > limits.max_messages:
        raise InvalidRequest(
            f"Too many messages: {len(messages)} > {limits.max_messages}.",
            param="messages",
            code="invalid_value",
        )
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        raise InvalidRequest("'model' must be a non-empty string.", param="model", code="invalid_value")
    for field in ("max_tokens", "max_completion_tokens"):
        value = payload.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > limits.max_tokens:
            raise InvalidRequest(
                f"'{field}' is {value}; this server allows at most {limits.max_tokens}.",
                param=field,
                code="invalid_value",
            )


def parse_chat_request(payload: Mapping[str, Any]) -> ChatCompletionRequest:
    try:
        parsed = ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc) from None
    ignored = parsed.unknown_fields()
    if ignored:
        log.info("ignoring unsupported request fields: %s", ", ".join(ignored))
    return parsed


@dataclass(frozen=True, slots=True)
class ChatBody:
    """A chat request's body, read once: its bytes (the pass-through relays them as they are), its JSON object
    (the cache key's material) and the facts every path reads. The typed request is parsed from it only where
    strategies run (`typed`): the pass-through and a cache hit do not need it."""

    raw: bytes
    payload: Mapping[str, Any]
    model: str
    stream: bool
    include_usage: bool
    """A stream ends with a usage chunk (`stream_options.include_usage`)."""
    user: str | None

    def typed(self) -> ChatCompletionRequest:
        return parse_chat_request(self.payload)


def read_chat_body(raw: bytes, limits: LimitSettings) -> ChatBody:
    """The body as JSON within `limits` (400 otherwise). `stream` and `include_usage` are read as strictly as
    the typed request reads them (true only when exactly `true`)."""
    payload = load_json_object(raw)
    check_limits(payload, limits)
    stream = payload.get("stream") is True
    options = payload.get("stream_options")
    user = payload.get("user")
    return ChatBody(
        raw=raw,
        payload=payload,
        model=payload["model"],
        stream=stream,
        include_usage=stream and isinstance(options, dict) and options.get("include_usage") is True,
        user=user if isinstance(user, str) else None,
    )
