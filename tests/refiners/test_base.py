"""What a step is handed and what it reports: the frozen request, the stats, the Run the gateway reads."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from refiners.backend import ChatMessage, Sampling
from refiners.base import Answer, Finished, GenerationEvent, Run, RunStats, TextPiece, collect, last_user_text
from refiners.config import RefinerConfig
from refiners.ledger import Ledger
from tests.support.scripted_backend import ScriptedBackend


def a_run(extra: dict[str, object]) -> Run:
    """A Run over the scripted backend (a documented fake; no call is made here)."""
    config = RefinerConfig()
    return Run(
        messages=(ChatMessage("user", "Hi"),),
        sampling=Sampling(max_tokens=8),
        config=config,
        ledger=Ledger(backend=ScriptedBackend(), budget=config.budget),
        extra=extra,
    )


def test_the_request_a_step_sees_cannot_be_changed() -> None:
    request = a_run({"top_k": 5}).request()
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.messages = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        request.extra["top_k"] = 1  # type: ignore[index]


def test_the_request_is_a_copy_of_the_runs_extra_fields() -> None:
    extra: dict[str, object] = {"top_k": 5}
    run = a_run(extra)
    request = run.request()
    extra["top_k"] = 1
    assert request.extra == {"top_k": 5}


def test_stats_count_rounds_and_keep_the_first_harmful_round_of_its_generation() -> None:
    stats = RunStats()
    stats.round_judged(1, harmful=False)
    stats.round_judged(2, harmful=True)
    stats.round_judged(1, harmful=True)  # a later generation's first round: not the first harmful one
    assert (stats.rounds_used, stats.first_harmful_round) == (3, 2)


def test_the_run_reads_its_stats() -> None:
    run = a_run({})
    run.stats.round_judged(1, harmful=True)
    run.stats.backtracks += 2
    run.stats.refused = True
    assert (run.rounds_used, run.first_harmful_round, run.backtracks, run.refused) == (1, 1, 2, True)


def test_meta_prompts_are_about_the_last_user_message() -> None:
    conversation = (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "First?"),
        ChatMessage("assistant", "One."),
        ChatMessage("user", "Second?"),
    )
    assert last_user_text(conversation) == "Second?"
    assert last_user_text((ChatMessage("system", "a"), ChatMessage("assistant", "b"))) == "a\nb"


async def test_collect_joins_the_text_and_keeps_the_finish() -> None:
    async def events() -> AsyncIterator[GenerationEvent]:
        yield TextPiece("Hello")
        yield TextPiece(", world")
        yield Finished("content_filter", 3)

    assert await collect(events()) == Answer("Hello, world", "content_filter", 3)
