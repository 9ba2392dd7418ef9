"""The one generation loop (plain generation, and psr's text once its rounds are spent), on fakes: the
scripted backend (tests/support/scripted_backend.py) and a stream that stalls, defined here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import MappingProxyType

from refiners.backend import (
    ChatMessage,
    Completion,
    CompletionChunk,
    GenerationRequest,
    Sampling,
    TokenDistribution,
    Usage,
)
from refiners.base import Answer, Finished, GenerationEvent, TextPiece, collect
from refiners.config import BudgetConfig
from refiners.generation import answer_request, plain_generate, stream_answer
from refiners.ledger import Ledger
from tests.refiners.conftest import context_of, make_run
from tests.support.scripted_backend import ScriptedBackend

SAMPLING = Sampling(max_tokens=16, temperature=0.0)
NO_EXTRA: MappingProxyType[str, object] = MappingProxyType({})


@dataclass
class StallingBackend:
    """A fake whose stream sends `pieces` (then its finish, when `finish`) and then stalls."""

    pieces: tuple[str, ...]
    finish: bool = False

    @property
    def model(self) -> str:
        return "stalling"

    async def complete(self, request: GenerationRequest) -> Completion:
        raise NotImplementedError

    async def stream(self, request: GenerationRequest) -> AsyncIterator[CompletionChunk]:
        for piece in self.pieces:
            yield CompletionChunk(piece)
        if self.finish:
            yield CompletionChunk("", "stop", Usage(completion_tokens=len(self.pieces)))
        await asyncio.sleep(60)

    async def next_token(self, request: GenerationRequest, top_logprobs: int = 20) -> TokenDistribution:
        raise NotImplementedError


def stalling_ledger(backend: StallingBackend) -> Ledger:
    return Ledger(backend=backend, budget=BudgetConfig(deadline_s=0.2))


def test_a_trailing_assistant_message_is_continued_not_answered() -> None:
    messages = (ChatMessage("user", "Count."), ChatMessage("assistant", "One, two,"))
    request = answer_request(messages, SAMPLING, MappingProxyType({"top_k": 3}))
    assert request.messages == messages[:1]
    assert request.prefix == "One, two,"
    assert request.extra == {"top_k": 3}
    assert answer_request(messages[:1], SAMPLING, NO_EXTRA).prefix == ""


async def test_plain_generation_streams_the_backends_answer_and_its_finish() -> None:
    backend = ScriptedBackend(answer_words=5)
    run = make_run(backend, max_tokens=16)
    events = [event async for event in plain_generate(run.messages, context_of(run))]
    assert [e.text for e in events if isinstance(e, TextPiece)] == ["w1", " w2", " w3", " w4", " w5"]
    assert events[-1] == Finished("stop", 5)
    assert [(s.strategy, s.step) for s in run.ledger.steps] == [("generate", "generate")]


async def test_plain_generation_stops_where_it_is_when_the_budget_is_spent() -> None:
    backend = ScriptedBackend()
    run = make_run(backend, budget=BudgetConfig(max_backend_calls=1))
    run.ledger.calls = 1
    assert await collect(plain_generate(run.messages, context_of(run))) == Answer("", "length", 0)
    assert backend.requests == []


async def test_the_tokens_already_visible_are_counted_in_the_finish() -> None:
    backend = ScriptedBackend(answer_words=3)
    request = GenerationRequest((ChatMessage("user", "Go."),), SAMPLING, prefix="w1")
    events = [
        e
        async for e in stream_answer(
            request, Ledger(backend=backend, budget=BudgetConfig()), visible_tokens=1
        )
    ]
    assert events[-1] == Finished("stop", 3)


async def test_out_of_time_mid_stream_the_caller_decides_with_the_text_the_client_has() -> None:
    seen: list[tuple[str, int]] = []

    def refuse(visible: str, tokens: int) -> list[GenerationEvent]:
        seen.append((visible, tokens))
        return [TextPiece(" [refused]"), Finished("content_filter", tokens)]

    request = GenerationRequest((ChatMessage("user", "Go."),), SAMPLING)
    ledger = stalling_ledger(StallingBackend((" b", " c")))
    events = [
        e async for e in stream_answer(request, ledger, visible="a", visible_tokens=1, on_budget_spent=refuse)
    ]
    assert events == [
        TextPiece(" b"),
        TextPiece(" c"),
        TextPiece(" [refused]"),
        Finished("content_filter", 1),
    ]
    assert seen == [("a b c", 1)]


async def test_out_of_time_after_the_finish_counts_the_tokens_the_backend_reported() -> None:
    request = GenerationRequest((ChatMessage("user", "Go."),), SAMPLING)
    ledger = stalling_ledger(StallingBackend((" b", " c"), finish=True))
    events = [e async for e in stream_answer(request, ledger, visible_tokens=1)]
    assert events[-1] == Finished("length", 3)
