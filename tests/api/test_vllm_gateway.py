"""The gateway on the vllm backend, in front of the loopback vLLM stand-in (tests/support/vllm_stub.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.servers import running_gateway
from tests.support.vllm_stub import StubState, VllmStub, free_port, running_stub

MODEL = "stub-model"
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me a story."}
]


@pytest.fixture
def client(vllm_gateway: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{vllm_gateway}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_completion_and_stream_through_the_gateway(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == 10
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=10, stream=True, stream_options={"include_usage": True}
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == whole.choices[0].message.content
    )
    assert chunks[-1].usage is not None


def test_unknown_fields_reach_vllm_unchanged(vllm_gateway: str, stub: tuple[str, VllmStub]) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "repetition_penalty": 1.1,
        "chat_template_kwargs": {"enable_thinking": False},
        "vendor_thing": [1, {"a": None}],
    }
    response = httpx.post(f"{vllm_gateway}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 200
    assert stub[1].state.received[-1] == body
    assert response.headers["x-twice-request-id"].startswith("chatcmpl-")


def test_stream_bytes_are_relayed_unchanged(vllm_gateway: str, stub_url: str) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "bytes please"}],
        "max_tokens": 12,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    direct = httpx.post(f"{stub_url}/v1/chat/completions", json=body, timeout=10)
    relayed = httpx.post(f"{vllm_gateway}/v1/chat/completions", json=body, timeout=10)
    assert relayed.status_code == 200
    assert relayed.headers["content-type"].startswith("text/event-stream")
    assert relayed.content == direct.content
    assert relayed.content.endswith(b"data: [DONE]\n\n")


def test_upstream_errors_are_relayed(vllm_gateway: str) -> None:
    response = httpx.post(
        f"{vllm_gateway}/v1/chat/completions",
        json={"model": "other-model", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_models_lists_the_upstream_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_unreachable_upstream_is_503() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with running_gateway("--backend", "vllm", "--upstream", dead, env={"TWICE_VLLM__MODEL": MODEL}) as base:
        response = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "service_unavailable"
        assert httpx.get(f"{base}/ready").status_code == 503


def test_slow_upstream_is_504_and_a_stalled_stream_ends_with_an_error_event() -> None:
    state = StubState(latency_s=0.0, token_delay_s=0.0)
    with (
        running_stub(state) as (url, _),
        running_gateway(
            "--backend", "vllm", "--upstream", url, env={"TWICE_VLLM__READ_TIMEOUT_S": "0.5"}
        ) as base,
    ):
        request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        assert httpx.post(f"{base}/v1/chat/completions", json=request, timeout=30).status_code == 200
        state.latency_s = 2.0
        slow = httpx.post(f"{base}/v1/chat/completions", json=request, timeout=30)
        assert slow.status_code == 504
        assert slow.json()["error"]["type"] == "timeout"
        state.latency_s, state.token_delay_s = 0.0, 2.0
        stalled = httpx.post(f"{base}/v1/chat/completions", json={**request, "stream": True}, timeout=30)
        assert stalled.status_code == 200
        events = [line for line in stalled.text.split("\n\n") if line]
        assert '"error"' in events[-2]
        assert events[-1] == "data: [DONE]"
        state.token_delay_s = 0.0
        assert httpx.post(f"{base}/v1/chat/completions", json=request, timeout=30).status_code == 200
