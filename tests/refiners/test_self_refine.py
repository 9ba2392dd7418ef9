"""self_refine on the scripted backend (tests/support/scripted_backend.py, a documented fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from refiners import self_refine
from refiners.base import Answer, Context, Conversation, Finished, GenerationEvent, TextPiece
from refiners.config import BudgetConfig, RefinerConfig, SelfRefineConfig
from refiners.fence import Fence
from refiners.generation import plain_generate
from refiners.self_refine import needs_no_change
from tests.refiners.conftest import context_of, make_run, self_refine_for
from tests.support.scripted_backend import ScriptedBackend

DRAFT = Answer("A first draft.", "stop", 3)


def test_feedback_verdict_parsing() -> None:
    assert needs_no_change("VERDICT: OK\nNothing to add.")
    assert needs_no_change("\n**Verdict: ok**")
    assert not needs_no_change("VERDICT: REVISE\n- add detail")
    assert not needs_no_change("The answer is OK but VERDICT: OK comes late")


async def test_self_refine_stops_early_when_feedback_says_ok() -> None:
    backend = ScriptedBackend(texts=["VERDICT: OK\nGood as it is."])
    run = make_run(backend)
    answer = await self_refine_for(run).edit(DRAFT, context_of(run), plain_generate)
    assert answer == DRAFT
    assert run.ledger.calls == 1


async def test_self_refine_rewrites_and_keeps_what_the_model_prefers() -> None:
    backend = ScriptedBackend(
        texts=["VERDICT: REVISE\n- more detail", "A better answer."], verdicts=[{"B": 0.7, "A": 0.3}]
    )
    run = make_run(backend)
    answer = await self_refine_for(run).edit(DRAFT, context_of(run), plain_generate)
    assert answer.text == "A better answer."
    feedback_prompt = backend.requests[0].messages[1].content
    assert "A first draft." in feedback_prompt
    rewrite_prompt = backend.requests[1].messages[1].content
    assert "- more detail" in rewrite_prompt


async def test_self_refine_keeps_the_original_when_judged_worse() -> None:
    backend = ScriptedBackend(
        texts=["VERDICT: REVISE\n- shorter", "Worse."], verdicts=[{" A": 0.6, " B": 0.3}]
    )
    run = make_run(backend)
    assert (await self_refine_for(run).edit(DRAFT, context_of(run), plain_generate)) == DRAFT


async def test_self_refine_keeps_the_original_when_the_rewrite_is_empty() -> None:
    backend = ScriptedBackend(texts=["VERDICT: REVISE\n- x", "   "])
    run = make_run(backend)
    assert (await self_refine_for(run).edit(DRAFT, context_of(run), plain_generate)) == DRAFT


async def test_self_refine_runs_several_rounds_within_budget() -> None:
    backend = ScriptedBackend(
        texts=["VERDICT: REVISE\n- a", "Second.", "VERDICT: REVISE\n- b", "Third."],
        verdicts=[{"B": 0.9}, {"B": 0.9}],
    )
    config = RefinerConfig(self_refine=SelfRefineConfig(rounds=3), budget=BudgetConfig(max_backend_calls=6))
    run = make_run(backend, config=config)
    answer = await self_refine_for(run).edit(DRAFT, context_of(run), plain_generate)
    assert answer.text == "Third."  # the budget of 6 calls ends round 3 before its feedback arrives
    assert run.ledger.calls == 6


async def test_self_refine_returns_the_rewrite_without_the_fence_the_model_copied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The real fence's boundary is random; a fixed one lets the scripted rewrite copy it, as Qwen2.5-1.5B did
    # on AdvBench requests (an opening marker, the answer, the closing marker, then a "feedback" of its own).
    monkeypatch.setattr(self_refine, "fence_for", lambda *texts: Fence("DATA-TEST"))
    echoed = "<<<DATA-TEST\nA better answer.\nDATA-TEST>>>\n\nFeedback:\n<<<DATA-TEST\nVERDICT: REVISE"
    backend = ScriptedBackend(texts=["VERDICT: REVISE\n- more", echoed], verdicts=[{"B": 0.7, "A": 0.3}])
    run = make_run(backend)
    answer = await self_refine_for(run).edit(DRAFT, context_of(run), plain_generate)
    assert answer.text == "A better answer."
    assert answer.finish_reason == "stop"
    assert 0 < answer.visible_tokens < len(echoed.split())
    compare_prompt = backend.verdict_requests[0].messages[1].content
    assert "VERDICT: REVISE" not in compare_prompt.split("Answer B:")[1]


async def test_self_refine_keeps_the_original_when_the_rewrite_is_only_an_echo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(self_refine, "fence_for", lambda *texts: Fence("DATA-TEST"))
    backend = ScriptedBackend(texts=["VERDICT: REVISE\n- x", "<<<DATA-TEST\n\nDATA-TEST>>>"])
    run = make_run(backend)
    assert (await self_refine_for(run).edit(DRAFT, context_of(run), plain_generate)) == DRAFT


async def test_self_refine_keeps_the_original_when_psr_refused_an_echoing_rewrite(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A guard stands in for psr: it lets the echoed opening and the closing marker out, then refuses.
    monkeypatch.setattr(self_refine, "fence_for", lambda *texts: Fence("DATA-TEST"))

    async def refusing_guard(messages: Conversation, context: Context) -> AsyncIterator[GenerationEvent]:
        yield TextPiece("<<<DATA-TEST\nStep 1.\nDATA-TEST>>>\nSorry, I can't help with that.")
        yield Finished("content_filter", 12)

    backend = ScriptedBackend(texts=["VERDICT: REVISE\n- more"], verdicts=[{"B": 0.9}])
    run = make_run(backend)
    assert (await self_refine_for(run).edit(DRAFT, context_of(run), refusing_guard)) == DRAFT
