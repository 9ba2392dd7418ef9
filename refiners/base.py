"""What a strategy is, and what it is handed.

A strategy plays one of three parts in the canonical pipeline (DESIGN §4):
- a `Shaper` changes what the model is asked (role_play, self_question);
- a `Guard` generates the answer and vets it as it goes (psr);
- an `Editor` improves a finished answer (self_refine); its rewrites are generated through the guard.

Each gets a `Run`: the request's conversation and sampling, the granted psr rounds, the strategy settings,
and the `Ledger` through which every backend call goes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from refiners.backend import ChatMessage, Sampling
from refiners.config import RefinerConfig
from refiners.ledger import Ledger

AnswerFinish = Literal["stop", "length", "content_filter"]
Conversation = tuple[ChatMessage, ...]


@dataclass(frozen=True, slots=True)
class TextPiece:
    """Text the client may receive now."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of a generation: why it ended, and how many generated tokens the client receives."""

    finish_reason: AnswerFinish
    visible_tokens: int


GenerationEvent = TextPiece | Finished
Generate = Callable[[Conversation, Sampling, "Run"], AsyncIterator[GenerationEvent]]


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    finish_reason: AnswerFinish
    visible_tokens: int


@dataclass
class Run:
    messages: Conversation
    sampling: Sampling
    config: RefinerConfig
    ledger: Ledger
    rounds: int = 0
    """psr reflection rounds granted to this request."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Backend fields carried to every call that writes the answer (never to self-checks)."""
    rounds_used: int = 0
    first_harmful_round: int | None = None
    """The round of the first harmful psr verdict, if one fired (the predictor's label)."""
    backtracks: int = 0
    refused: bool = False


class Shaper(Protocol):
    name: ClassVar[str]

    async def shape(self, messages: Conversation, run: Run) -> Conversation: ...


class Guard(Protocol):
    name: ClassVar[str]

    def generate(
        self, messages: Conversation, sampling: Sampling, run: Run
    ) -> AsyncIterator[GenerationEvent]: ...


class Editor(Protocol):
    name: ClassVar[str]

    async def edit(self, answer: Answer, run: Run, generate: Generate) -> Answer: ...


Strategy = Shaper | Guard | Editor


def last_user_text(messages: Conversation) -> str:
    """The request a meta-prompt is about: the last user message (the whole conversation if none)."""
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return "\n".join(m.content for m in messages)


async def collect(events: AsyncIterator[GenerationEvent]) -> Answer:
    parts: list[str] = []
    finished = Finished("stop", 0)
    async for event in events:
        if isinstance(event, TextPiece):
            parts.append(event.text)
        else:
            finished = event
    return Answer("".join(parts), finished.finish_reason, finished.visible_tokens)
