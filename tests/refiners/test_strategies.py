"""self_refine, self_question, role_play and the pipeline, on the scripted backend (a documented fake)."""

from __future__ import annotations

from refiners.backend import ChatMessage
from refiners.base import Answer, Finished, TextPiece, collect
from refiners.config import BudgetConfig, PsrConfig, RefinerConfig, SelfRefineConfig
from refiners.generation import plain_generate
from refiners.pipeline import run_plan
from refiners.registry import build_strategies, canonical_order
from refiners.role_play import RolePlay, clean_role
from refiners.self_question import SelfQuestion, parse_questions
from refiners.self_refine import SelfRefine, needs_no_change
from tests.refiners.conftest import make_run
from tests.support.scripted_backend import ScriptedBackend

DRAFT = Answer("A first draft.", "stop", 3)


def test_canonical_order_ignores_header_order() -> None:
    assert canonical_order(["self_refine", "psr", "self_question", "role_play"]) == (
        "role_play",
        "self_question",
        "psr",
        "self_refine",
    )


def test_feedback_verdict_parsing() -> None:
    assert needs_no_change("VERDICT: OK\nNothing to add.")
    assert needs_no_change("\n**Verdict: ok**")
    assert not needs_no_change("VERDICT: REVISE\n- add detail")
    assert not needs_no_change("The answer is OK but VERDICT: OK comes late")


async def test_self_refine_stops_early_when_feedback_says_ok() -> None:
    backend = ScriptedBackend(texts=["VERDICT: OK\nGood as it is."])
    run = make_run(backend)
    answer = await SelfRefine().edit(DRAFT, run, plain_generate)
    assert answer == DRAFT
    assert run.ledger.calls == 1


async def test_self_refine_rewrites_and_keeps_what_the_model_prefers() -> None:
    backend = ScriptedBackend(
        texts=["VERDICT: REVISE\n- more detail", "A better answer."], verdicts=[{"B": 0.7, "A": 0.3}]
    )
    run = make_run(backend)
    answer = await SelfRefine().edit(DRAFT, run, plain_generate)
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
    assert (await SelfRefine().edit(DRAFT, run, plain_generate)) == DRAFT


async def test_self_refine_keeps_the_original_when_the_rewrite_is_empty() -> None:
    backend = ScriptedBackend(texts=["VERDICT: REVISE\n- x", "   "])
    run = make_run(backend)
    assert (await SelfRefine().edit(DRAFT, run, plain_generate)) == DRAFT


async def test_self_refine_runs_several_rounds_within_budget() -> None:
    backend = ScriptedBackend(
        texts=["VERDICT: REVISE\n- a", "Second.", "VERDICT: REVISE\n- b", "Third."],
        verdicts=[{"B": 0.9}, {"B": 0.9}],
    )
    config = RefinerConfig(self_refine=SelfRefineConfig(rounds=3), budget=BudgetConfig(max_backend_calls=6))
    run = make_run(backend, config=config)
    answer = await SelfRefine().edit(DRAFT, run, plain_generate)
    assert answer.text == "Third."  # the budget of 6 calls ends round 3 before its feedback arrives
    assert run.ledger.calls == 6


def test_question_parsing_drops_echoes_of_the_prompt() -> None:
    text = "<<<DATA-1FA3A2EE0EF22E8A\nWhy is the sky blue?\nData-1FA3A2EE0EF22E8A>>\n1. What is light?"
    assert parse_questions(text, 3, echoed=("Why is the  sky blue?",)) == ["What is light?"]


def test_question_parsing_strips_list_markers() -> None:
    text = "1. What is light?\n2) Why green?\n- How fast?\n\nQ4: Extra?"
    assert parse_questions(text, 3) == ["What is light?", "Why green?", "How fast?"]


async def test_self_question_adds_its_notes_as_system_context() -> None:
    backend = ScriptedBackend(
        texts=["1. What is chlorophyll?\n2. What is light?\n3. Why leaves?", "A", "B", "C"]
    )
    run = make_run(backend)
    shaped = await SelfQuestion().shape(run.messages, run)
    assert shaped[0].role == "system"
    assert "Q1: What is chlorophyll?" in shaped[0].content
    assert "A3: C" in shaped[0].content
    assert shaped[1:] == run.messages
    assert run.ledger.calls == 4


async def test_self_question_keeps_the_system_message_of_the_client() -> None:
    backend = ScriptedBackend(texts=["1. Q?", "A"])
    messages = (ChatMessage("system", "Be brief."), ChatMessage("user", "Why?"))
    run = make_run(backend, messages=messages)
    shaped = await SelfQuestion().shape(messages, run)
    assert shaped[0].content.startswith("Be brief.")
    assert len(shaped) == 2


def test_role_cleaning() -> None:
    assert clean_role('"You are a botanist."\n\nMore text') == "You are a botanist."
    assert clean_role("  ") == ""


async def test_role_play_sets_the_role_and_caches_it_by_question() -> None:
    backend = ScriptedBackend(texts=["You are a plant biologist who explains clearly."])
    strategy = RolePlay()
    run = make_run(backend)
    shaped = await strategy.shape(run.messages, run)
    assert shaped[0] == ChatMessage("system", "You are a plant biologist who explains clearly.")
    again = make_run(backend)
    assert await strategy.shape(again.messages, again) == shaped
    assert again.ledger.calls == 0
    assert [s.output for s in again.ledger.steps if s.step == "role"] == [shaped[0].content]


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
