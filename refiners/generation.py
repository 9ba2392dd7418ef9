"""Plain generation: the answer streamed straight from the backend, with no guard."""

from __future__ import annotations

from collections.abc import AsyncIterator

from refiners.backend import GenerationRequest, Sampling
from refiners.base import Conversation, Finished, GenerationEvent, Run, TextPiece
from refiners.ledger import BudgetExhausted


async def plain_generate(
    messages: Conversation, sampling: Sampling, run: Run
) -> AsyncIterator[GenerationEvent]:
    finish: Finished = Finished("length", 0)
    try:
        async for chunk in run.ledger.stream("generate", "generate", GenerationRequest(messages, sampling)):
            if chunk.text:
                yield TextPiece(chunk.text)
            if chunk.finish_reason is not None:
                tokens = chunk.usage.completion_tokens if chunk.usage else 0
                finish = Finished(chunk.finish_reason, tokens)
    except BudgetExhausted:
        finish = Finished("length", finish.visible_tokens)
    yield finish
