"""Writing the answer as a stream, straight from the backend: plain generation, and psr's text once its
rounds are spent (refiners/psr.py). One loop serves both; what running out of calls or time means is the
caller's: plain generation stops where the answer is, psr refuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from refiners.backend import GenerationRequest, Sampling
from refiners.base import Context, Conversation, Finished, GenerationEvent, TextPiece
from refiners.ledger import BudgetExhausted, Ledger

BudgetSpent = Callable[[str, int], Iterable[GenerationEvent]]
"""(the text the client has, its generated tokens as far as known) -> how the answer ends."""


def answer_request(messages: Conversation, sampling: Sampling, extra: Mapping[str, Any]) -> GenerationRequest:
    """The call that writes the answer. A trailing assistant message is a partial answer, continued rather
    than answered."""
    if messages and messages[-1].role == "assistant":
        return GenerationRequest(messages[:-1], sampling, prefix=messages[-1].content, extra=extra)
    return GenerationRequest(messages, sampling, extra=extra)


def stop_where_it_is(visible: str, visible_tokens: int) -> list[GenerationEvent]:
    """Out of calls or time: the answer ends as it is, cut short."""
    del visible  # what the client has stays as it is
    return [Finished("length", visible_tokens)]


async def stream_answer(
    request: GenerationRequest,
    ledger: Ledger,
    *,
    visible: str = "",
    visible_tokens: int = 0,
    on_budget_spent: BudgetSpent = stop_where_it_is,
) -> AsyncIterator[GenerationEvent]:
    """Each piece of text as the backend writes it, after the `visible` text (of `visible_tokens` tokens) the
    client already has; then `Finished` with the backend's finish reason and the tokens the client has, or,
    out of calls or time, whatever `on_budget_spent` ends the answer with."""
    finish = Finished("length", visible_tokens)
    try:
        async for chunk in ledger.stream("generate", "generate", request):
            if chunk.text:
                visible += chunk.text
                yield TextPiece(chunk.text)
            if chunk.finish_reason is not None:
                generated = chunk.usage.completion_tokens if chunk.usage else 0
                finish = Finished(chunk.finish_reason, visible_tokens + generated)
    except BudgetExhausted:
        for event in on_budget_spent(visible, finish.visible_tokens):
            yield event
        return
    yield finish


def plain_generate(messages: Conversation, context: Context) -> AsyncIterator[GenerationEvent]:
    """The answer with no guard: streamed as it is written."""
    request = context.request
    return stream_answer(answer_request(messages, request.sampling, request.extra), context.ledger)
