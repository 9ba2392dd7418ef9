"""Plain generation: the answer streamed straight from the backend, with no guard."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from refiners.backend import GenerationRequest, Sampling
from refiners.base import Context, Conversation, Finished, GenerationEvent, TextPiece
from refiners.ledger import BudgetExhausted


def answer_request(messages: Conversation, sampling: Sampling, extra: Mapping[str, Any]) -> GenerationRequest:
    """The call that writes the answer. A trailing assistant message is a partial answer, continued rather
    than answered."""
    if messages and messages[-1].role == "assistant":
        return GenerationRequest(messages[:-1], sampling, prefix=messages[-1].content, extra=extra)
    return GenerationRequest(messages, sampling, extra=extra)


async def plain_generate(messages: Conversation, context: Context) -> AsyncIterator[GenerationEvent]:
    request = answer_request(messages, context.request.sampling, context.request.extra)
    finish: Finished = Finished("length", 0)
    try:
        async for chunk in context.ledger.stream("generate", "generate", request):
            if chunk.text:
                yield TextPiece(chunk.text)
            if chunk.finish_reason is not None:
                tokens = chunk.usage.completion_tokens if chunk.usage else 0
                finish = Finished(chunk.finish_reason, tokens)
    except BudgetExhausted:
        finish = Finished("length", finish.visible_tokens)
    yield finish
