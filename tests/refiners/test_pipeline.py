"""The pipeline on the scripted backend (tests/support/scripted_backend.py, a documented fake)."""

from __future__ import annotations

import pytest

from refiners.base import Finished, TextPiece, collect
from refiners.config import PsrConfig, RefinerConfig
from refiners.ledger import NullObserver
from refiners.pipeline import Steps, make_steps, run_plan
from refiners.registry import build_strategies
from tests.refiners.conftest import make_run
from tests.support.scripted_backend import ScriptedBackend


async def test_pipeline_runs_stages_in_canonical_order() -> None:
    backend = ScriptedBackend(
        answer_words=6,
        texts=["You are an expert.", "1. Why is it?", "Because.", "w1 w2", "VERDICT: OK"],
    )
    run = make_run(backend, rounds=0)
    strategies = build_strategies(RefinerConfig())
    events = [
        e async for e in run_plan(["self_refine", "psr", "self_question", "role_play"], strategies, run)
    ]
    purposes = [(s.strategy, s.step) for s in run.ledger.steps]
    assert purposes == [
        ("role_play", "role"),
        ("self_question", "questions"),
        ("self_question", "answer"),
        ("generate", "generate"),
        ("self_refine", "feedback"),
    ]
    assert events[-1] == Finished("stop", 2)
    assert [e.text for e in events if isinstance(e, TextPiece)] == ["w1 w2"]
    system = backend.requests[3].messages[0]
    assert system.content.startswith("You are an expert.")
    assert "Q1: Why is it?" in system.content


async def test_pipeline_guards_self_refine_rewrites_with_psr() -> None:
    backend = ScriptedBackend(
        answer_words=4, texts=["w1 w2", "VERDICT: REVISE\n- x"], verdicts=[0.0, 0.99, 0.99]
    )
    run = make_run(backend, rounds=4, psr=PsrConfig(chunk_tokens=8))
    strategies = build_strategies(RefinerConfig())
    answer = await collect(run_plan(["psr", "self_refine"], strategies, run))
    # The rewrite was refused by psr, so the draft that passed its check is kept.
    assert answer.finish_reason != "content_filter"
    assert len(backend.verdict_requests) == 3


async def test_each_self_refine_rewrite_gets_psr_rounds_of_its_own() -> None:
    """With one round, the draft spends it; the rewrite is still checked (and here refused), never sent
    unchecked."""
    backend = ScriptedBackend(answer_words=4, texts=["w1 w2", "VERDICT: REVISE\n- x"], verdicts=[0.0, 0.99])
    run = make_run(backend, rounds=1, psr=PsrConfig(chunk_tokens=8))
    strategies = build_strategies(RefinerConfig())
    answer = await collect(run_plan(["psr", "self_refine"], strategies, run))
    assert len(backend.verdict_requests) == 2
    assert run.rounds_used == 2
    assert answer.text == "w1 w2"
    assert answer.finish_reason == "stop"


def test_a_plan_is_made_into_steps_by_stage_in_canonical_order() -> None:
    steps = make_steps(
        ["self_refine", "psr", "role_play", "self_question"],
        build_strategies(RefinerConfig()),
        RefinerConfig(),
        2,
    )
    assert [s.name for s in steps.shapers] == ["role_play", "self_question"]
    assert steps.guard is not None
    assert steps.guard.name == "psr"
    assert [e.name for e in steps.editors] == ["self_refine"]
    assert make_steps([], build_strategies(RefinerConfig()), RefinerConfig(), 2) == Steps()


@pytest.mark.parametrize("plan", [[], ["psr"]])
async def test_backend_fields_reach_the_answer_calls_and_never_the_self_checks(plan: list[str]) -> None:
    backend = ScriptedBackend(answer_words=12)
    run = make_run(backend, rounds=1, psr=PsrConfig(chunk_tokens=4, final_check=False))
    run.extra = {"top_k": 7}
    await collect(run_plan(plan, build_strategies(RefinerConfig()), run))
    assert [dict(r.extra) for r in backend.requests] == [{"top_k": 7}] * len(backend.requests)
    assert all(not r.extra for r in backend.verdict_requests)


async def test_a_shaper_changes_what_is_answered_not_what_is_reviewed() -> None:
    """psr fences the client's own request, not the conversation a shaper made of it."""
    backend = ScriptedBackend(answer_words=8, texts=["You are a careful botanist who explains."])
    run = make_run(backend, rounds=1)
    await collect(run_plan(["role_play", "psr"], build_strategies(RefinerConfig()), run))
    assert backend.requests[1].messages[0].content.startswith("You are a careful botanist")
    review = backend.verdict_requests[0].messages[-1].content
    assert "Explain photosynthesis." in review
    assert "botanist" not in review


async def test_each_step_is_timed_under_its_name() -> None:
    timed: list[str] = []

    class Timing(NullObserver):
        def strategy_time(self, strategy: str, seconds: float) -> None:
            timed.append(strategy)

    backend = ScriptedBackend(answer_words=4, texts=["1. Why?", "Because.", "w1 w2", "VERDICT: OK"])
    run = make_run(backend, rounds=0)
    run.ledger.observer = Timing()
    await collect(run_plan(["self_question", "self_refine"], build_strategies(RefinerConfig()), run))
    assert timed == ["self_question", "generate", "self_refine"]
