"""Every strategy, and all of them together, through `twice serve` on the real embedded model, with the
official openai client, streaming and not."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import EMBEDDED_MODEL

pytestmark = pytest.mark.model

QUESTION: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Give one tip for growing tomatoes."}
]
PLANS = ["psr", "self_refine", "self_question", "role_play", "self_refine,psr,role_play,self_question"]


@pytest.fixture(scope="module")
def client(strategy_gateway: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{strategy_gateway}/v1", api_key="unused", max_retries=0, timeout=600
    ) as client:
        yield client


def create(client: openai.OpenAI, plan: str, *, rounds: str = "2", trace: bool = False, **kwargs: Any) -> Any:
    headers = {"X-Twice-Strategy": plan, "X-Twice-Rounds": rounds}
    if trace:
        headers["X-Twice-Trace"] = "1"
    return client.chat.completions.with_raw_response.create(
        model=EMBEDDED_MODEL, messages=QUESTION, max_tokens=24, temperature=0, extra_headers=headers, **kwargs
    )


@pytest.mark.parametrize("plan", PLANS)
def test_plan_without_streaming(client: openai.OpenAI, plan: str) -> None:
    raw = create(client, plan, trace=True)
    completion = raw.parse()
    applied = raw.headers["x-twice-strategy-applied"].split(",")
    assert sorted(applied) == sorted(plan.split(","))
    assert raw.headers["x-twice-request-id"] == completion.id
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length", "content_filter")
    twice = completion.model_extra["twice"]
    assert twice["strategies"] == applied
    assert twice["backend_calls"] >= 2
    assert twice["backend_calls"] == len(twice["trace"]) - sum(
        1 for s in twice["trace"] if s["elapsed_ms"] == 0
    )
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    hidden = usage.completion_tokens_details.reasoning_tokens
    assert usage.completion_tokens == sum(t["completion"] for t in twice["tokens"].values())
    assert usage.prompt_tokens == sum(t["prompt"] for t in twice["tokens"].values())
    assert 0 <= hidden <= usage.completion_tokens
    if "psr" in applied:
        verdicts = [s for s in twice["trace"] if s["step"] == "verdict"]
        assert len(verdicts) == twice["rounds"]["used"] == int(raw.headers["x-twice-rounds-used"])
        assert all(0.0 <= s["score"] <= 1.0 for s in verdicts)
        assert all("DATA-" in s["prompt"][1]["content"] for s in verdicts)
        # Each verdict produced one token the client never sees.
        assert hidden >= len(verdicts) > 0
    else:
        assert hidden > 0


@pytest.mark.parametrize("plan", PLANS)
def test_plan_streaming(client: openai.OpenAI, plan: str) -> None:
    stream = client.chat.completions.create(
        model=EMBEDDED_MODEL,
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Twice-Strategy": plan, "X-Twice-Rounds": "2"},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1
    assert final[0].model_extra is not None
    twice = final[0].model_extra["twice"]
    assert sorted(twice["strategies"]) == sorted(plan.split(","))
    assert "trace" not in twice
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= len(text.split()) // 2


@pytest.mark.parametrize("plan", ["none", "psr", "role_play", "role_play,psr"])
def test_stream_and_json_agree_on_a_deterministic_backend(vllm_gateway: str, plan: str) -> None:
    """Streaming must not change the answer. Compared on the vLLM stand-in, which is deterministic: llama.cpp
    is not across calls that reuse different KV-cache prefixes (batch shapes change near-tie argmaxes).
    Plans whose answer depends on a fenced meta-prompt's output (self_question's notes, self_refine's
    feedback) differ between any two requests, streamed or not, since each request draws its own fence."""
    with openai.OpenAI(base_url=f"{vllm_gateway}/v1", api_key="unused", max_retries=0) as client:
        kwargs: dict[str, Any] = {
            "model": "stub-model",
            "messages": QUESTION,
            "max_tokens": 24,
            "temperature": 0,
            "extra_headers": {"X-Twice-Strategy": plan, "X-Twice-Rounds": "3"},
        }
        whole = client.chat.completions.create(**kwargs)
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]


def test_psr_with_zero_rounds_equals_plain_generation(client: openai.OpenAI) -> None:
    plain = create(client, "none").parse()
    guarded = create(client, "psr", rounds="0").parse()
    assert guarded.choices[0].message.content == plain.choices[0].message.content
    assert guarded.model_extra["twice"]["backend_calls"] == 1


@pytest.mark.parametrize(
    ("headers", "param"),
    [
        ({"X-Twice-Strategy": "psr,mind_reading"}, "X-Twice-Strategy"),
        ({"X-Twice-Strategy": "psr,PSR"}, "X-Twice-Strategy"),
        ({"X-Twice-Rounds": "1000"}, "X-Twice-Rounds"),
        ({"X-Twice-Trace": "perhaps"}, "X-Twice-Trace"),
    ],
)
def test_bad_headers_are_400_naming_the_header(
    client: openai.OpenAI, headers: dict[str, str], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=EMBEDDED_MODEL, messages=QUESTION, max_tokens=4, extra_headers=headers
        )
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["param"] == param
