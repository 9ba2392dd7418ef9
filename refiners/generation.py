"""Plain generation: the answer streamed straight from the backend, with no guard."""

from __future__ import annotations

from collections.abc import AsyncIterator

from refiners.backend import GenerationRequest, Sampling
from refiners.base import Conversation, Finished, GenerationEvent, Run, TextPiece
from refiners.ledger import BudgetExhausted


def answer_request(messages: Conversation, sampling: Sampling, run: Run) -> GenerationRequest:
    """The call that writes the answer. A trailing assistant message is a partial answer, continued rather
    than answered."""
    if messages and messages[-1].role == "assistant":
        return GenerationRequest(messages[:-1], sampling, prefix=messages[-1].content, extra=run.extra)
    return GenerationRequest(messages, sampling, extra=run.extra)


async def plain_generate(
    messages: Conversation, sampling: Sampling, run: Run
) -> AsyncIterator[GenerationEvent]:
    request = answer_request(messages, sampling, run)
    finish: Finished = Finished("length", 0)
    try:
        async for chunk in run.ledger.stream("generate", "generate", request):
            if chunk.text:
                yield TextPiece(chunk.text)
            if chunk.finish_reason is not None:
                tokens = chunk.usage.completion_tokens if chunk.usage else 0
                finish = Finished(chunk.finish_reason, tokens)
    except BudgetExhausted:
        finish = Finished("length", finish.visible_tokens)
    yield finish
