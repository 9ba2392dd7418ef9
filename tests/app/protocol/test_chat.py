"""The chat-completions wire models (app/protocol/chat.py): what a request may and may not carry, and how
responses are written. The 400s these become over HTTP are in tests/api/test_errors.py and
tests/reliability/test_hostile_input.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from app.protocol.chat import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ChunkDelta,
    PromptTokensDetails,
    UsageInfo,
)
from refiners.backend import ChatMessage


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def parse(payload: dict[str, Any]) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(payload)


def refused_at(payload: dict[str, Any]) -> set[tuple[str | int, ...]]:
    with pytest.raises(ValidationError) as raised:
        parse(payload)
    return {tuple(error["loc"]) for error in raised.value.errors()}


def test_a_minimal_request_parses_with_the_defaults() -> None:
    parsed = parse(request())
    assert (parsed.stream, parsed.stream_options, parsed.temperature, parsed.n) == (False, None, None, None)
    assert parsed.messages[0].to_chat_message() == ChatMessage("user", "hi")


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"messages": []}, ("messages",)),
        ({"model": ""}, ("model",)),
        ({"model": "m" * 257}, ("model",)),
        ({"temperature": 2.5}, ("temperature",)),
        ({"temperature": -0.1}, ("temperature",)),
        ({"temperature": "0.5"}, ("temperature",)),  # strict: a string is not a number
        ({"top_p": 0}, ("top_p",)),
        ({"top_p": 1.01}, ("top_p",)),
        ({"max_tokens": 0}, ("max_tokens",)),
        ({"max_completion_tokens": 0}, ("max_completion_tokens",)),
        ({"max_tokens": True}, ("max_tokens",)),  # strict: a boolean is not an integer
        ({"n": 0}, ("n",)),
        ({"n": 129}, ("n",)),
        ({"seed": 1.5}, ("seed",)),
        ({"stop": ["a", "b", "c", "d", "e"]}, ("stop",)),
        ({"stop": 5}, ("stop",)),
        ({"user": "u" * 257}, ("user",)),
        ({"stream": "true"}, ("stream",)),
        ({"stream": 1}, ("stream",)),
        ({"stream_options": {"include_usage": "yes"}}, ("stream_options", "include_usage")),
    ],
)
def test_out_of_range_or_mistyped_fields_are_refused_at_their_place(
    fields: dict[str, Any], where: tuple[str, ...]
) -> None:
    assert any(location[: len(where)] == where for location in refused_at(request(**fields)))


@pytest.mark.parametrize(
    "message",
    [
        {"role": "tool", "content": "x", "tool_call_id": "1"},
        {"role": "function", "content": "x"},
        {"role": "User", "content": "x"},
        {"role": "user"},
        {"role": "user", "content": None},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]},
        {"role": "user", "content": [{"type": "text"}]},
        {"role": "user", "content": 42},
        "hi",
    ],
)
def test_a_message_must_be_a_known_role_with_text(message: Any) -> None:
    assert any(location[0] == "messages" for location in refused_at(request(messages=[message])))


def test_the_boundaries_of_the_ranges_are_accepted() -> None:
    parsed = parse(request(temperature=0, top_p=1, n=128, max_tokens=1, stop=["a", "b", "c", "d"]))
    assert parsed.temperature == 0.0
    assert parse(request(temperature=2)).temperature == 2.0
    assert parse(request(user="u" * 256)).user == "u" * 256


def test_fields_the_gateway_does_not_model_are_kept_and_listed_in_order() -> None:
    parsed = parse(request(zeta=1, response_format={"type": "json_object"}, alpha=None))
    assert parsed.unknown_fields() == ["alpha", "response_format", "zeta"]
    assert parse(request()).unknown_fields() == []


def test_text_parts_are_joined_and_developer_is_the_system_role() -> None:
    parts = [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]
    parsed = parse(
        request(messages=[{"role": "developer", "content": parts}, {"role": "user", "content": ""}])
    )
    assert parsed.messages[0].to_chat_message() == ChatMessage("system", "Be brief.")
    assert parsed.messages[1].text() == ""


@pytest.mark.parametrize(
    ("stop", "expected"),
    [(None, ()), ("END", ("END",)), (["a", "", "b"], ("a", "b")), ("", ()), ([], ())],
)
def test_stop_sequences_are_a_tuple_without_empty_ones(stop: Any, expected: tuple[str, ...]) -> None:
    assert parse(request(stop=stop)).stop_sequences() == expected


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert parse(request(max_tokens=10, max_completion_tokens=20)).requested_max_tokens() == 20
    assert parse(request(max_tokens=10)).requested_max_tokens() == 10
    assert parse(request()).requested_max_tokens() is None


def test_a_chunk_leaves_out_what_it_does_not_hold_but_writes_a_choices_nulls() -> None:
    chunk = ChatCompletionChunk(
        id="c", created=1, model="m", choices=[ChunkChoice(delta=ChunkDelta(content="hi"))]
    )
    written = orjson.loads(chunk.model_dump_json())
    assert "usage" not in written
    assert "twice" not in written
    assert written["choices"] == [
        {"index": 0, "delta": {"content": "hi"}, "logprobs": None, "finish_reason": None}
    ]


def test_a_usage_chunk_has_no_choice_and_leaves_out_unknown_details() -> None:
    usage = UsageInfo(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    written = orjson.loads(
        ChatCompletionChunk(id="c", created=1, model="m", choices=[], usage=usage).model_dump_json()
    )
    assert written["choices"] == []
    assert written["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    detailed = usage.model_copy(update={"prompt_tokens_details": PromptTokensDetails(cached_tokens=2)})
    chunk = ChatCompletionChunk(id="c", created=1, model="m", choices=[], usage=detailed)
    assert orjson.loads(chunk.model_dump_json())["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
