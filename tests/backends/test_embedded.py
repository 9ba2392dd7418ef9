"""The embedded backend's answers do not depend on what its contexts computed before (the real SmolLM2).

`bench/greedy_determinism.py` on SmolLM2, before this test's fix: 6 of 8 greedy answers identical when asked
again, 6 of 8 when written in 32-token chunks each continued from the text of the ones before; the two that
moved, both ways, are the prompts below. After: 8 of 8 both ways (and on Qwen2.5-Coder-1.5B).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.backends.embedded import EmbeddedBackend, _Slot
from refiners.backend import ChatMessage, GenerationRequest, Sampling

PROMPTS = ["Write a SQL query that counts orders per customer.", "How do I make a cup of green tea?"]


def greedy(max_tokens: int) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0)


@pytest.mark.model
@pytest.mark.parametrize("prompt", PROMPTS)
async def test_the_same_greedy_request_twice_gives_the_same_answer(
    embedded_backend: EmbeddedBackend, prompt: str
) -> None:
    messages = (ChatMessage("user", prompt),)
    first = await embedded_backend.complete(GenerationRequest(messages, greedy(64)))
    second = await embedded_backend.complete(GenerationRequest(messages, greedy(64)))
    assert second.text == first.text


@pytest.mark.model
@pytest.mark.parametrize("prompt", PROMPTS)
async def test_an_answer_continued_chunk_by_chunk_is_the_answer_written_at_once(
    embedded_backend: EmbeddedBackend, prompt: str
) -> None:
    """What psr does when no verdict fires: each chunk continues the text of the ones before."""
    messages = (ChatMessage("user", prompt),)
    whole = await embedded_backend.complete(GenerationRequest(messages, greedy(96)))
    text = ""
    for _ in range(3):
        chunk = await embedded_backend.complete(GenerationRequest(messages, greedy(32), prefix=text))
        text += chunk.text
        if chunk.finish_reason == "stop":
            break
    assert text == whole.text


def slot(n_batch: int = 4) -> _Slot:
    return _Slot(llm=SimpleNamespace(n_batch=n_batch, n_tokens=0))


def test_a_generation_resumes_at_the_batch_its_prompt_was_evaluated_in() -> None:
    context = slot(n_batch=4)
    context.llm.n_tokens = 13  # a 10-token prompt evaluated from 0 (batches at 0, 4, 8), 3 tokens decoded
    context.evaluated(0, 10)
    assert context.resume_points == [0, 4, 8, 10, 11, 12, 13]
    assert context.resume_point(shared=10, prompt_length=10) == 8  # the same prompt again: its last batch
    assert context.resume_point(shared=13, prompt_length=14) == 13  # a continuation: only the new token
    assert context.resume_point(shared=6, prompt_length=20) == 4
    assert context.resume_point(shared=0, prompt_length=5) == 0


def test_a_later_evaluation_replaces_the_points_after_its_start() -> None:
    context = slot(n_batch=4)
    context.llm.n_tokens = 10
    context.evaluated(0, 10)
    context.llm.n_tokens = 7
    context.evaluated(5, 7)
    assert context.resume_points == [0, 4, 5, 7]
