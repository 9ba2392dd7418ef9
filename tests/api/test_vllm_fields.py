"""What a vLLM client sends passes through twice unchanged; strategies answer what they cannot honour with a
clear 400 (the matrix in docs/fields.md). Against the loopback vLLM stand-in (tests/support/vllm_stub.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.shared_params import ResponseFormatJSONSchema

from tests.conftest import EMBEDDED_MODEL
from tests.support.servers import running_gateway
from tests.support.vllm_stub import StubState, VllmStub, running_stub

MODEL = "stub-model"
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Weather in Paris?"}
]
TOOLS: list[openai.types.chat.ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
SCHEMA: ResponseFormatJSONSchema = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
    },
}


@pytest.fixture
def client(vllm_gateway: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{vllm_gateway}/v1", api_key="unused", max_retries=0) as client:
        yield client


def last_received(stub: tuple[str, VllmStub]) -> dict[str, Any]:
    return stub[1].state.received[-1]


def test_tool_calls_pass_through(client: openai.OpenAI, stub: tuple[str, VllmStub]) -> None:
    response = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="auto", parallel_tool_calls=False
    )
    sent = last_received(stub)
    assert sent["tools"] == TOOLS
    assert sent["tool_choice"] == "auto"
    assert sent["parallel_tool_calls"] is False
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "query" in json.loads(call.function.arguments)  # type: ignore[union-attr]


def test_streamed_tool_call_deltas_pass_through(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, stream=True)
    name, arguments, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                name += (call.function and call.function.name) or ""
                arguments += (call.function and call.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert name == "get_weather"
    assert json.loads(arguments)["query"]
    assert finish == "tool_calls"


def test_response_format_logprobs_and_n_pass_through(
    client: openai.OpenAI, stub: tuple[str, VllmStub]
) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        response_format=SCHEMA,
        logprobs=True,
        top_logprobs=3,
        n=2,
        max_tokens=5,
        presence_penalty=0.5,
        extra_body={"guided_decoding_backend": "xgrammar", "min_tokens": 2, "repetition_penalty": 1.1},
    )
    sent = last_received(stub)
    assert sent["response_format"] == SCHEMA
    assert (sent["n"], sent["top_logprobs"], sent["min_tokens"]) == (2, 3, 2)
    assert [c.index for c in response.choices] == [0, 1]
    assert response.choices[0].message.content != response.choices[1].message.content
    assert "answer" in json.loads(response.choices[0].message.content or "")
    logprobs = response.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert len(logprobs.content[0].top_logprobs) == 3


@pytest.mark.parametrize(
    ("strategy", "body", "param"),
    [
        ("psr", {"tools": TOOLS}, "tools"),
        ("role_play", {"tool_choice": "required", "tools": TOOLS}, "tool_choice"),
        ("psr", {"n": 2}, "n"),
        ("self_question", {"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ("psr", {"response_format": SCHEMA}, "response_format"),
        ("self_refine", {"guided_json": {"type": "object"}}, "guided_json"),
    ],
)
def test_strategies_refuse_fields_they_cannot_honour(
    vllm_gateway: str, strategy: str, body: dict[str, Any], param: str
) -> None:
    response = httpx.post(
        f"{vllm_gateway}/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, **body},
        headers={"X-Twice-Strategy": strategy},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert strategy in error["message"] or param == "n"


def test_structured_output_reaches_only_the_final_call_of_role_play(
    client: openai.OpenAI, stub: tuple[str, VllmStub]
) -> None:
    before = len(stub[1].state.received)
    client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        response_format=SCHEMA,
        max_tokens=6,
        extra_headers={"X-Twice-Strategy": "role_play"},
    )
    role_call, final_call = stub[1].state.received[before:]
    assert "response_format" not in role_call
    assert final_call["response_format"] == SCHEMA


def test_sampling_fields_reach_answer_calls_not_self_checks(
    client: openai.OpenAI, stub: tuple[str, VllmStub]
) -> None:
    before = len(stub[1].state.received)
    response = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=12,
        presence_penalty=0.4,
        extra_body={"repetition_penalty": 1.2},
        extra_headers={"X-Twice-Strategy": "psr", "X-Twice-Rounds": "2"},
    )
    calls = stub[1].state.received[before:]
    verdicts = [c for c in calls if c.get("logprobs")]
    chunks = [c for c in calls if not c.get("logprobs")]
    assert verdicts
    assert chunks
    assert all(c["presence_penalty"] == 0.4 and c["repetition_penalty"] == 1.2 for c in chunks)
    assert all("presence_penalty" not in c and "repetition_penalty" not in c for c in verdicts)
    assert response.choices[0].message.content


def test_models_and_adapters_of_the_upstream_are_served() -> None:
    state = StubState(extra_models=("stub-model-lora",))
    with running_stub(state) as (url, _), running_gateway("--backend", "vllm", "--upstream", url) as base:
        listed = httpx.get(f"{base}/v1/models").json()["data"]
        assert [m["id"] for m in listed] == ["stub-model", "stub-model-lora"]
        body = {"model": "stub-model-lora", "messages": MESSAGES, "max_tokens": 3}
        assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=10).status_code == 200
        missing = httpx.post(f"{base}/v1/chat/completions", json={**body, "model": "nope"}, timeout=10)
        assert missing.status_code == 404
        assert missing.json()["error"]["param"] == "model"


@pytest.mark.model
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": TOOLS}, "tools"),
        ({"presence_penalty": 0.3}, "presence_penalty"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_embedded_backend_names_the_backend_that_serves_a_field(
    gateway: str, body: dict[str, Any], param: str
) -> None:
    response = httpx.post(
        f"{gateway}/v1/chat/completions",
        json={"model": EMBEDDED_MODEL, "messages": MESSAGES, "max_tokens": 2, **body},
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert "vllm backend" in error["message"]
