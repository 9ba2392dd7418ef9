"""What a strategy is, what it is handed, and what it reports.

A strategy plays one of three parts in the canonical pipeline (DESIGN §4):
- a `Shaper` changes what the model is asked (role_play, self_question);
- a `Guard` generates the answer and vets it as it goes (psr);
- an `Editor` improves a finished answer (self_refine); its rewrites are generated through the guard.

The worker keeps one `Strategy` of each kind (refiners/registry.py); for each request it makes the step that
runs, with that request's settings (refiners/settings.py), frozen. A step is handed a `Context`: the client's
`Request` (frozen, so no step can change what the next one sees), the `Ledger` through which every backend
call goes, and the `RunStats` it reports into. The gateway builds a `Run`, and reads the stats back from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Literal, Protocol

from refiners.backend import ChatMessage, Sampling
from refiners.config import RefinerConfig
from refiners.ledger import Ledger

AnswerFinish = Literal["stop", "length", "content_filter"]
Conversation = tuple[ChatMessage, ...]
Stage = Literal["shaper", "guard", "editor"]


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


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    finish_reason: AnswerFinish
    visible_tokens: int


@dataclass(frozen=True, slots=True)
class Request:
    """What the client asked, as every step sees it."""

    messages: Conversation
    sampling: Sampling
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Backend fields carried to every call that writes the answer (never to self-checks); read-only."""


@dataclass(slots=True)
class RunStats:
    """What the steps of one request report (the gateway's `twice` object, metrics and psr telemetry)."""

    rounds_used: int = 0
    """psr rounds of every guarded generation together (may exceed the rounds granted to each)."""
    first_harmful_round: int | None = None
    """The round, within its own generation, of the first harmful psr verdict (the predictor's label)."""
    backtracks: int = 0
    refused: bool = False

    def round_judged(self, round_in_generation: int, *, harmful: bool) -> None:
        self.rounds_used += 1
        if harmful and self.first_harmful_round is None:
            self.first_harmful_round = round_in_generation


@dataclass(frozen=True, slots=True)
class Context:
    """What a step is handed: the request (frozen), the ledger (every backend call) and the stats."""

    request: Request
    ledger: Ledger
    stats: RunStats


Generate = Callable[[Conversation, Context], AsyncIterator[GenerationEvent]]
"""Writes the answer to a conversation with the request's sampling: the guard, or plain generation."""


class Shaper(Protocol):
    name: ClassVar[str]

    async def shape(self, messages: Conversation, context: Context) -> Conversation: ...


class Guard(Protocol):
    name: ClassVar[str]

    def generate(self, messages: Conversation, context: Context) -> AsyncIterator[GenerationEvent]: ...


class Editor(Protocol):
    name: ClassVar[str]

    async def edit(self, answer: Answer, context: Context, generate: Generate) -> Answer: ...


Step = Shaper | Guard | Editor


class Strategy(Protocol):
    """A strategy as a worker keeps it: built once, it makes each request's step with that request's
    settings."""

    @property
    def name(self) -> str: ...

    @property
    def stage(self) -> Stage: ...

    def for_request(self, config: RefinerConfig, rounds: int) -> Step: ...


@dataclass
class Run:
    """One request as the gateway hands it to `refiners.pipeline.run_plan`, and reads it back."""

    messages: Conversation
    sampling: Sampling
    config: RefinerConfig
    ledger: Ledger
    rounds: int = 0
    """psr reflection rounds granted to this request."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Backend fields carried to every call that writes the answer (never to self-checks)."""
    stats: RunStats = field(default_factory=RunStats)

    def request(self) -> Request:
        """The request frozen, as the steps see it."""
        return Request(self.messages, self.sampling, MappingProxyType(dict(self.extra)))

    @property
    def rounds_used(self) -> int:
        return self.stats.rounds_used

    @property
    def first_harmful_round(self) -> int | None:
        return self.stats.first_harmful_round

    @property
    def backtracks(self) -> int:
        return self.stats.backtracks

    @property
    def refused(self) -> bool:
        return self.stats.refused


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
