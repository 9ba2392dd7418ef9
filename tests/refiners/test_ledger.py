"""The ledger: budget, accounting, routing and trace of every backend call, on the scripted backend
(tests/support/scripted_backend.py, a documented fake) and a recording observer defined here."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import pytest

from refiners.backend import ChatMessage, GenerationRequest, Sampling, Usage
from refiners.config import BudgetConfig
from refiners.ledger import BudgetExhausted, Ledger, TraceStep, prompt_of
from tests.support.scripted_backend import ScriptedBackend

REQUEST = GenerationRequest((ChatMessage("user", "Hi."),), Sampling(max_tokens=3, temperature=0.0))


@dataclass
class RecordingObserver:
    calls: list[tuple[str, str]] = field(default_factory=list)

    def backend_call(self, strategy: str, purpose: str, seconds: float) -> None:
        self.calls.append((strategy, purpose))

    def verdict(self, result: str) -> None:
        return None

    def backtrack(self) -> None:
        return None

    def refusal(self, reason: str) -> None:
        return None

    def strategy_time(self, strategy: str, seconds: float) -> None:
        return None


def ledger_of(
    backend: ScriptedBackend,
    *,
    calls: int = 64,
    deadline_s: float = 300.0,
    tracing: bool = False,
    observer: RecordingObserver | None = None,
    routing_key: str | None = None,
    model: str = "",
) -> Ledger:
    return Ledger(
        backend=backend,
        budget=BudgetConfig(max_backend_calls=calls, deadline_s=deadline_s),
        tracing=tracing,
        observer=observer or RecordingObserver(),
        routing_key=routing_key,
        model=model,
    )


async def test_calls_past_the_budget_are_refused_before_they_reach_the_backend() -> None:
    backend = ScriptedBackend(answer_words=3)
    ledger = ledger_of(backend, calls=2)
    await ledger.complete("generate", "generate", REQUEST)
    await ledger.next_token("psr", "verdict", REQUEST, 20)
    with pytest.raises(BudgetExhausted) as raised:
        await ledger.complete("generate", "generate", REQUEST)
    assert raised.value.reason == "calls"
    assert (ledger.calls, ledger.remaining_calls(), len(backend.requests)) == (2, 0, 1)


async def test_a_call_that_outlives_the_deadline_is_cut_short() -> None:
    ledger = ledger_of(ScriptedBackend(delay_s=5.0), deadline_s=0.1)
    started = time.monotonic()
    with pytest.raises(BudgetExhausted) as raised:
        await ledger.complete("generate", "generate", REQUEST)
    assert raised.value.reason == "deadline"
    assert time.monotonic() - started < 2.0


async def test_no_call_starts_after_the_deadline() -> None:
    backend = ScriptedBackend()
    ledger = ledger_of(backend, deadline_s=0.01)
    ledger.started -= 1.0
    with pytest.raises(BudgetExhausted):
        await ledger.next_token("psr", "verdict", REQUEST, 20)
    assert backend.verdict_requests == []


async def test_tokens_are_summed_per_strategy_and_every_call_is_observed() -> None:
    observer = RecordingObserver()
    ledger = ledger_of(ScriptedBackend(answer_words=3), observer=observer)
    await ledger.complete("generate", "generate", REQUEST)  # 10 prompt, 3 completion
    await ledger.next_token("psr", "verdict", REQUEST, 20)  # 50 prompt
    _ = [chunk async for chunk in ledger.stream("generate", "generate", REQUEST)]
    assert ledger.usage == Usage(prompt_tokens=70, completion_tokens=6)
    assert (ledger.by_strategy["generate"].prompt, ledger.by_strategy["generate"].completion) == (20, 6)
    assert ledger.by_strategy["psr"].prompt == 50
    assert observer.calls == [("generate", "generate"), ("psr", "verdict"), ("generate", "generate")]


async def test_every_call_carries_the_requests_routing_key_and_model() -> None:
    backend = ScriptedBackend(answer_words=2)
    ledger = ledger_of(backend, routing_key="chatcmpl-1", model="m")
    await ledger.complete("generate", "generate", REQUEST)
    await ledger.next_token(
        "psr", "verdict", GenerationRequest(REQUEST.messages, REQUEST.sampling, model="own"), 20
    )
    assert (backend.requests[0].routing_key, backend.requests[0].model) == ("chatcmpl-1", "m")
    assert (backend.verdict_requests[0].routing_key, backend.verdict_requests[0].model) == (
        "chatcmpl-1",
        "own",
    )


async def test_a_stream_left_early_is_still_accounted_and_traced() -> None:
    ledger = ledger_of(ScriptedBackend(answer_words=5), tracing=True)
    stream = ledger.stream("generate", "generate", REQUEST)
    assert isinstance(stream, AsyncGenerator)
    assert (await anext(stream)).text == "w1"
    await stream.aclose()
    assert ledger.calls == 1
    assert [(s.step, s.output) for s in ledger.steps] == [("generate", "w1")]
    assert ledger.by_strategy["generate"].completion == 0  # the usage comes with the last chunk, never read


async def test_the_trace_is_kept_only_when_asked_for() -> None:
    quiet = ledger_of(ScriptedBackend(answer_words=2))
    await quiet.complete("generate", "generate", REQUEST)
    assert quiet.steps == []
    traced = ledger_of(ScriptedBackend(answer_words=2), tracing=True)
    await traced.complete("generate", "generate", REQUEST, round=2, checkpoint=3)
    (step,) = traced.steps
    assert (step.round, step.checkpoint, step.output, step.prompt) == (2, 3, "w1 w2", prompt_of(REQUEST))


def test_only_the_latest_step_of_a_name_is_marked_discarded() -> None:
    ledger = ledger_of(ScriptedBackend(), tracing=True)
    for output in ("a", "b"):
        ledger.trace(TraceStep("generate", "generate", 0, 1, [], output, 1.0))
    ledger.trace(TraceStep("psr", "verdict", 1, 1, [], "Yes", 1.0))
    ledger.mark_last_discarded("generate")
    assert [s.discarded for s in ledger.steps] == [False, True, False]


def test_a_trace_step_leaves_out_what_it_does_not_have() -> None:
    step = TraceStep("generate", "generate", 0, 1, [], "w1", 2.0).to_dict()
    assert not {"score", "harmful", "off_format"} & step.keys()
    assert step["discarded"] is False


def test_the_prompt_shows_a_continued_answer_as_its_last_assistant_turn() -> None:
    request = GenerationRequest(REQUEST.messages, REQUEST.sampling, prefix="So far")
    assert prompt_of(request)[-1] == {"role": "assistant", "content": "So far"}
