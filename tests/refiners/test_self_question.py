"""self_question on the scripted backend (tests/support/scripted_backend.py, a documented fake)."""

from __future__ import annotations

from refiners.backend import ChatMessage
from refiners.self_question import parse_questions
from tests.refiners.conftest import context_of, make_run, self_question_for
from tests.support.scripted_backend import ScriptedBackend


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
    shaped = await self_question_for(run).shape(run.messages, context_of(run))
    assert shaped[0].role == "system"
    assert "Q1: What is chlorophyll?" in shaped[0].content
    assert "A3: C" in shaped[0].content
    assert shaped[1:] == run.messages
    assert run.ledger.calls == 4


async def test_self_question_keeps_the_system_message_of_the_client() -> None:
    backend = ScriptedBackend(texts=["1. Q?", "A"])
    messages = (ChatMessage("system", "Be brief."), ChatMessage("user", "Why?"))
    run = make_run(backend, messages=messages)
    shaped = await self_question_for(run).shape(messages, context_of(run))
    assert shaped[0].content.startswith("Be brief.")
    assert len(shaped) == 2
