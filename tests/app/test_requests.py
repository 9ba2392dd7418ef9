from __future__ import annotations

import orjson
import pytest

from app.errors import InvalidRequest
from app.requests import read_chat_body
from app.settings import LimitSettings

LIMITS = LimitSettings()
MESSAGES = [{"role": "user", "content": "hi"}]


def body(**fields: object) -> bytes:
    return orjson.dumps({"model": "m", "messages": MESSAGES, **fields})


@pytest.mark.parametrize(
    ("fields", "stream", "include_usage"),
    [
        ({}, False, False),
        ({"stream": True}, True, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True, True),
        # Read as strictly as the typed request reads them: only exactly `true` counts.
        ({"stream": 1, "stream_options": {"include_usage": True}}, False, False),
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, True, False),
        ({"stream": False, "stream_options": {"include_usage": True}}, False, False),
    ],
)
def test_stream_and_usage_are_derived_once(
    fields: dict[str, object], stream: bool, include_usage: bool
) -> None:
    chat = read_chat_body(body(**fields), LIMITS)
    assert chat.stream is stream
    assert chat.include_usage is include_usage


def test_the_body_keeps_its_bytes_model_and_user() -> None:
    raw = body(user="alice")
    chat = read_chat_body(raw, LIMITS)
    assert chat.raw is raw
    assert chat.model == "m"
    assert chat.user == "alice"
    assert read_chat_body(body(user=7), LIMITS).user is None


def test_the_typed_request_agrees_with_the_derived_facts() -> None:
    chat = read_chat_body(body(stream=True, stream_options={"include_usage": True}), LIMITS)
    typed = chat.typed()
    assert typed.stream is chat.stream
    assert typed.stream_options is not None
    assert typed.stream_options.include_usage is chat.include_usage


def test_limits_apply_when_the_body_is_read() -> None:
    with pytest.raises(InvalidRequest) as raised:
        read_chat_body(orjson.dumps({"model": "m", "messages": []}), LIMITS)
    assert raised.value.param == "messages"
