"""The Backend contract, one suite for both backends: the embedded one on the real model, the vllm one
against the loopback vLLM stand-in (tests/support/vllm_stub.py)."""

from __future__ import annotations

import pytest

from refiners.backend import (
    Backend,
    ChatMessage,
    CompletionChunk,
    GenerationRequest,
    Sampling,
)

pytestmark = pytest.mark.model

QUESTION = (ChatMessage("user", "Name three colours of the rainbow."),)


@pytest.fixture(params=["embedded", "vllm"])
def backend(request: pytest.FixtureRequest) -> Backend:
    fixture = "embedded_backend" if request.param == "embedded" else "vllm_backend"
    chosen: Backend = request.getfixturevalue(fixture)
    return chosen


def greedy(max_tokens: int, **kwargs: object) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0, **kwargs)  # type: ignore[arg-type]


async def collect(backend: Backend, request: GenerationRequest) -> list[CompletionChunk]:
    return [chunk async for chunk in backend.stream(request)]


async def test_backend_satisfies_protocol(backend: Backend) -> None:
    assert isinstance(backend, Backend)
    assert backend.model


async def test_complete_respects_max_tokens(backend: Backend) -> None:
    result = await backend.complete(GenerationRequest(QUESTION, greedy(8)))
    assert result.text
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 8
    assert result.usage.prompt_tokens > 0


async def test_stream_equals_complete_at_temperature_zero(backend: Backend) -> None:
    request = GenerationRequest(QUESTION, greedy(24))
    whole = await backend.complete(request)
    chunks = await collect(backend, request)
    assert "".join(c.text for c in chunks) == whole.text
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].finish_reason == whole.finish_reason
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.text]) > 1, "a stream must arrive in pieces"


async def test_continue_partial_answer_extends_it(backend: Backend) -> None:
    whole = await backend.complete(GenerationRequest(QUESTION, greedy(32)))
    words = whole.text.split(" ")
    assert len(words) > 3
    partial = " ".join(words[: len(words) // 2])
    rest = await backend.complete(GenerationRequest(QUESTION, greedy(32), prefix=partial))
    assert rest.text
    # The continuation is of the partial answer, not a fresh answer: its prompt holds the partial text.
    assert rest.usage.prompt_tokens > whole.usage.prompt_tokens


async def test_continuation_reuses_the_cached_prefix(backend: Backend) -> None:
    first = await backend.complete(GenerationRequest(QUESTION, greedy(40)))
    again = await backend.complete(GenerationRequest(QUESTION, greedy(8), prefix=first.text[:60]))
    assert again.usage.cached_tokens > 0


async def test_stop_sequence_ends_the_answer(backend: Backend) -> None:
    whole = await backend.complete(GenerationRequest(QUESTION, greedy(32)))
    words = [w for w in whole.text.split() if len(w) > 2]
    stop = words[min(3, len(words) - 1)]
    cut = await backend.complete(GenerationRequest(QUESTION, greedy(32, stop=(stop,))))
    assert stop not in cut.text
    assert cut.finish_reason == "stop"
    assert whole.text.startswith(cut.text)
    streamed = "".join(
        c.text for c in await collect(backend, GenerationRequest(QUESTION, greedy(32, stop=(stop,))))
    )
    assert streamed == cut.text


async def test_next_token_gives_a_top_k_distribution(backend: Backend) -> None:
    request = GenerationRequest(
        (ChatMessage("user", "Is water wet? Answer with Yes or No."),), greedy(1), prefix="Answer:"
    )
    distribution = await backend.next_token(request, top_logprobs=5)
    assert 1 <= len(distribution.top) <= 5
    probabilities = list(distribution.top.values())
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert sum(probabilities) <= 1.0 + 1e-6
    assert distribution.usage.prompt_tokens > 0


async def test_seeded_sampling_repeats(backend: Backend) -> None:
    sampling = Sampling(max_tokens=16, temperature=1.0, seed=1234)
    first = await backend.complete(GenerationRequest(QUESTION, sampling))
    second = await backend.complete(GenerationRequest(QUESTION, sampling))
    assert first.text == second.text
