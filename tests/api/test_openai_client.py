"""The official `openai` client against `twice serve` on loopback, on the real embedded model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from tests.conftest import EMBEDDED_MODEL

pytestmark = pytest.mark.model

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Say hello."},
]


@pytest.fixture
def client(gateway: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture
async def async_client(gateway: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_sync_completion(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=EMBEDDED_MODEL, messages=MESSAGES, max_tokens=12, temperature=0
    )
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.model == EMBEDDED_MODEL
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert response.usage is not None
    assert 0 < response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_sync_stream_matches_non_stream(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model=EMBEDDED_MODEL, messages=MESSAGES, max_tokens=16, temperature=0
    )
    stream = client.chat.completions.create(
        model=EMBEDDED_MODEL,
        messages=MESSAGES,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
    assert len({c.id for c in chunks}) == 1


def test_with_raw_response_has_request_id(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=EMBEDDED_MODEL, messages=MESSAGES, max_tokens=4
    )
    completion = raw.parse()
    assert raw.headers["x-twice-request-id"] == completion.id


async def test_async_completion_and_stream(async_client: openai.AsyncOpenAI) -> None:
    response = await async_client.chat.completions.create(
        model=EMBEDDED_MODEL, messages=MESSAGES, max_completion_tokens=8, seed=7, temperature=0.8
    )
    assert response.choices[0].message.content
    stream = await async_client.chat.completions.create(
        model=EMBEDDED_MODEL, messages=MESSAGES, max_completion_tokens=8, seed=7, temperature=0.8, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == response.choices[0].message.content


def test_content_parts_and_unknown_fields_are_accepted(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=EMBEDDED_MODEL,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi."}]}
        ],
        max_tokens=4,
        user="someone",
        stop=["\n\n"],
        extra_body={"some_vendor_field": {"x": 1}},
    )
    assert response.choices[0].message.content is not None


def test_list_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [EMBEDDED_MODEL]
