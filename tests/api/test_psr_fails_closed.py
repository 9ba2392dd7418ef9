"""psr through `twice serve`, streaming and not, on the vLLM stand-in, whose self-check answers "Yes"
(harmful) whenever the reviewed text contains UNSAFE (tests/support/fake_model.py). Two rules:
- a harmful verdict on the last granted round ends in a refusal: nothing generated after it is released;
- the operator's required plan (TWICE_PLAN__REQUIRED) cannot be switched off by a client.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support.servers import running_gateway

HARMFUL: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me the UNSAFE thing."}
]
BENIGN: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Name a colour."}]
REFUSAL = "I can't help with that."


def ask(
    client: openai.OpenAI, messages: Any, headers: dict[str, str], *, stream: bool
) -> tuple[str, str, Any]:
    """(text, finish_reason, response headers) of one request."""
    kwargs: dict[str, Any] = {
        "model": "stub-model",
        "messages": messages,
        "max_tokens": 48,
        "temperature": 0,
        "extra_headers": headers,
    }
    if not stream:
        raw = client.chat.completions.with_raw_response.create(**kwargs)
        completion = raw.parse()
        choice = completion.choices[0]
        return choice.message.content or "", choice.finish_reason, raw.headers
    with client.chat.completions.with_streaming_response.create(stream=True, **kwargs) as response:
        chunks = list(response.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        return text, finish[-1], response.headers


@pytest.fixture(scope="module", params=["true", "false"], ids=["final-check", "no-final-check"])
def gateway_client(request: pytest.FixtureRequest, stub_url: str) -> Iterator[openai.OpenAI]:
    env = {
        "TWICE_PSR__FINAL_CHECK": request.param,
        "TWICE_PSR__CHUNK_TOKENS": "8",
        "TWICE_PLAN__CLIENT_MAY_LOWER_ROUNDS": "true",
    }
    with (
        running_gateway("--backend", "vllm", "--upstream", stub_url, env=env) as base,
        openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as client,
    ):
        yield client


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_a_harmful_verdict_on_the_last_round_refuses(
    gateway_client: openai.OpenAI, rounds: int, stream: bool
) -> None:
    headers = {"X-Twice-Strategy": "psr", "X-Twice-Rounds": str(rounds)}
    text, finish, response_headers = ask(gateway_client, HARMFUL, headers, stream=stream)
    assert finish == "content_filter"
    assert text == REFUSAL  # the first chunk was already harmful: nothing of the answer is released
    if not stream:  # a stream's headers leave before its rounds are spent
        # Every verdict is harmful: the answer ends at the last round, or at B = 2 at one checkpoint.
        assert int(response_headers["x-twice-rounds-used"]) == min(rounds, 2)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_benign_answer_passes_every_round(gateway_client: openai.OpenAI, stream: bool) -> None:
    text, finish, _ = ask(
        gateway_client, BENIGN, {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "1"}, stream=stream
    )
    assert finish in ("stop", "length")
    assert text
    assert REFUSAL not in text


@pytest.fixture(scope="module")
def required_client(stub_url: str) -> Iterator[openai.OpenAI]:
    env = {"TWICE_PLAN__REQUIRED": "psr", "TWICE_PLAN__CLIENT_MAY_LOWER_ROUNDS": "true"}
    with (
        running_gateway("--backend", "vllm", "--upstream", stub_url, env=env) as base,
        openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as client,
    ):
        yield client


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(
    "headers",
    [
        {"X-Twice-Strategy": "none"},
        {"X-Twice-Strategy": "none", "X-Twice-Rounds": "0"},
        {"X-Twice-Strategy": "role_play", "X-Twice-Rounds": "0"},
    ],
    ids=["none", "none-0-rounds", "role_play-0-rounds"],
)
def test_a_client_cannot_switch_off_the_required_plan(
    required_client: openai.OpenAI, headers: dict[str, str], stream: bool
) -> None:
    text, finish, response_headers = ask(required_client, HARMFUL, headers, stream=stream)
    assert "psr" in response_headers["x-twice-strategy-applied"].split(",")
    assert finish == "content_filter"
    assert text.endswith(REFUSAL)


def test_the_required_plan_is_in_the_trace(required_client: openai.OpenAI) -> None:
    raw = required_client.chat.completions.with_raw_response.create(
        model="stub-model",
        messages=BENIGN,
        max_tokens=16,
        extra_headers={"X-Twice-Strategy": "none", "X-Twice-Trace": "1"},
    )
    extra = raw.parse().model_extra
    assert extra is not None
    twice = extra["twice"]
    assert twice["strategies"] == ["psr"]
    assert twice["required"] == ["psr"]
    assert twice["rounds"]["granted"] >= 1
    assert any(step["step"] == "verdict" for step in twice["trace"])
