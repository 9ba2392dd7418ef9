"""The canonical composition of a plan: shapers → generation (guarded) → editors (DESIGN §4).

Each request's steps are made once, here, with that request's settings. Without editors the generation
streams straight through (psr releases each chunk after its verdict); with editors the draft is buffered,
edited, and the final answer is sent whole.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import cast

from refiners.base import (
    Context,
    Editor,
    Finished,
    Generate,
    GenerationEvent,
    Guard,
    Run,
    Shaper,
    Strategy,
    TextPiece,
    collect,
)
from refiners.config import RefinerConfig
from refiners.generation import plain_generate
from refiners.registry import canonical_order


@dataclass(frozen=True, slots=True)
class Steps:
    """One request's plan, made: its steps by stage, in canonical order."""

    shapers: tuple[Shaper, ...] = ()
    guard: Guard | None = None
    editors: tuple[Editor, ...] = ()


def make_steps(
    names: Iterable[str], strategies: Mapping[str, Strategy], config: RefinerConfig, rounds: int
) -> Steps:
    """The steps of the named strategies, each made with its settings for this request."""
    shapers: list[Shaper] = []
    guard: Guard | None = None
    editors: list[Editor] = []
    for name in canonical_order(names):
        strategy = strategies[name]
        step = strategy.for_request(config, rounds)
        if strategy.stage == "guard":
            guard = cast(Guard, step)
        elif strategy.stage == "editor":
            editors.append(cast(Editor, step))
        else:
            shapers.append(cast(Shaper, step))
    return Steps(tuple(shapers), guard, tuple(editors))


async def run_plan(
    names: Iterable[str], strategies: Mapping[str, Strategy], run: Run
) -> AsyncIterator[GenerationEvent]:
    steps = make_steps(names, strategies, run.config, run.rounds)
    context = Context(run.request(), run.ledger, run.stats)
    observer = run.ledger.observer
    messages = context.request.messages
    for shaper in steps.shapers:
        started = time.monotonic()
        messages = await shaper.shape(messages, context)
        observer.strategy_time(shaper.name, time.monotonic() - started)

    guard = steps.guard
    generate: Generate = guard.generate if guard is not None else plain_generate
    generation_name = guard.name if guard is not None else "generate"
    started = time.monotonic()
    if not steps.editors:
        async for event in generate(messages, context):
            yield event
        observer.strategy_time(generation_name, time.monotonic() - started)
        return

    answer = await collect(generate(messages, context))
    observer.strategy_time(generation_name, time.monotonic() - started)
    for editor in steps.editors:
        started = time.monotonic()
        answer = await editor.edit(answer, context, generate)
        observer.strategy_time(editor.name, time.monotonic() - started)
    if answer.text:
        yield TextPiece(answer.text)
    yield Finished(answer.finish_reason, answer.visible_tokens)
