"""The canonical composition of a plan: shapers → generation (guarded) → editors (DESIGN §4).

Without editors the generation streams straight through (psr releases each chunk after its verdict); with
editors the draft is buffered, edited, and the final answer is sent whole.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Mapping

from refiners.base import Finished, Generate, GenerationEvent, Run, Strategy, TextPiece, collect
from refiners.generation import plain_generate
from refiners.registry import split_stages


async def run_plan(
    names: Iterable[str], strategies: Mapping[str, Strategy], run: Run
) -> AsyncIterator[GenerationEvent]:
    shapers, guard, editors = split_stages(names, strategies)
    observer = run.ledger.observer
    messages = run.messages
    for shaper in shapers:
        started = time.monotonic()
        messages = await shaper.shape(messages, run)
        observer.strategy_time(shaper.name, time.monotonic() - started)

    generate: Generate = guard.generate if guard is not None else plain_generate
    generation_name = guard.name if guard is not None else "generate"
    started = time.monotonic()
    if not editors:
        async for event in generate(messages, run.sampling, run):
            yield event
        observer.strategy_time(generation_name, time.monotonic() - started)
        return

    answer = await collect(generate(messages, run.sampling, run))
    observer.strategy_time(generation_name, time.monotonic() - started)
    for editor in editors:
        started = time.monotonic()
        answer = await editor.edit(answer, run, generate)
        observer.strategy_time(editor.name, time.monotonic() - started)
    if answer.text:
        yield TextPiece(answer.text)
    yield Finished(answer.finish_reason, answer.visible_tokens)
