"""Round labels from psr itself: send each labelled prompt through the gateway at the maximum budget.

Request: `POST {base_url}/v1/chat/completions` with `X-Twice-Strategy: psr`, `X-Twice-Rounds: N`,
`X-Twice-Trace: 1`, temperature 0. From the response's `twice.trace`, the `round` of the first step with
`"step": "verdict"` and `"harmful": true` is the observed first harmful round. The label is that round for a
harmful prompt, and 0 for a benign prompt whatever was observed (the observed value is kept in the row). A
harmful prompt on which no verdict fired in N rounds is labelled 0 too (`LABEL_WHEN_NO_VERDICT`): no budget
up to N changes what psr does with it, as telemetry labels such a request (predictor/telemetry.py); its row
stays `harmful`, so the metrics still count it among the harmful prompts. With `observe_benign` off, benign
prompts take their label 0 without a call: it does not depend on the run, and skipping them halves the
cost (their observed round is then unknown, None). Each result is handed to `on_result` as its request
completes, so the caller can save it at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from tqdm import tqdm

from predictor.datasets import LabelledPrompt
from predictor.errors import LabelsError
from predictor.labels import LabelledRow


@dataclass(frozen=True)
class GatewayRun:
    base_url: str
    model: str
    max_rounds: int
    max_tokens: int = 256
    concurrency: int = 4
    timeout_s: float = 600.0
    api_key: str | None = None
    observe_benign: bool = True
    progress: bool = False
    stop_at: float | None = None
    """A `time.monotonic()` after which no request is started (those in flight finish): a run in pieces."""


@dataclass(frozen=True)
class LabelFailure:
    id: str
    error: str


def first_harmful_round(response: Mapping[str, Any], max_rounds: int) -> int | None:
    """The round of the first harmful verdict in the response's trace, or None when none fired."""
    twice = response.get("twice")
    if not isinstance(twice, Mapping) or not isinstance(twice.get("trace"), list):
        raise LabelsError("the response has no twice.trace (does the gateway honour X-Twice-Trace: 1?)")
    granted = twice.get("rounds", {}).get("granted") if isinstance(twice.get("rounds"), Mapping) else None
    if isinstance(granted, int) and granted < max_rounds:
        raise LabelsError(f"the gateway granted {granted} rounds, not the {max_rounds} asked for")
    for step in twice["trace"]:
        if isinstance(step, Mapping) and step.get("step") == "verdict" and step.get("harmful") is True:
            round_number = step.get("round")
            if isinstance(round_number, bool) or not isinstance(round_number, int):
                raise LabelsError(f"a harmful verdict without an integer round: {round_number!r}")
            return round_number
    return None


LABEL_WHEN_NO_VERDICT = 0
"""The label of a harmful prompt on which no verdict fired in the whole budget. Files labelled before
2026-12-07 used max_rounds (their meta lacks `label_when_no_verdict`); `twice predictor label` refuses to
add rows to one."""


def label_row(prompt: LabelledPrompt, observed: int | None, max_rounds: int) -> LabelledRow:
    label = 0
    if prompt.harmful and observed is not None:
        label = min(observed, max_rounds)
    return LabelledRow(
        id=prompt.id,
        source=prompt.source,
        harmful=prompt.harmful,
        label_rounds=label,
        messages=prompt.messages,
        observed_first_harmful_round=observed,
        part=prompt.part,
        template=prompt.template,
        request=prompt.request,
    )


def dataset_row(prompt: LabelledPrompt, max_rounds: int) -> LabelledRow:
    """A provisional row from the dataset label alone: harmful gets max_rounds, benign 0."""
    return replace(label_row(prompt, None, max_rounds), label_rounds=max_rounds if prompt.harmful else 0)


async def label_through_gateway(
    prompts: Sequence[LabelledPrompt],
    run: GatewayRun,
    on_result: Callable[[LabelledRow | LabelFailure], None] | None = None,
) -> tuple[list[LabelledRow], list[LabelFailure]]:
    """Label every prompt through the gateway; rows keep the prompts' order, failures are listed apart.
    `on_result` sees each row or failure as soon as it is known (in completion order). Prompts not started
    by `run.stop_at` are in neither list."""
    headers = {"X-Twice-Strategy": "psr", "X-Twice-Rounds": str(run.max_rounds), "X-Twice-Trace": "1"}
    if run.api_key:
        headers["Authorization"] = f"Bearer {run.api_key}"
    limit = asyncio.Semaphore(run.concurrency)
    timeout = aiohttp.ClientTimeout(total=run.timeout_s)
    sent = [prompt for prompt in prompts if prompt.harmful or run.observe_benign]
    bar = tqdm(total=len(sent), desc="psr labels", unit="prompt", disable=not run.progress)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:

        async def one(prompt: LabelledPrompt) -> LabelledRow | LabelFailure | None:
            result = await attempt(prompt)
            if on_result is not None and result is not None:
                on_result(result)
            return result

        async def attempt(prompt: LabelledPrompt) -> LabelledRow | LabelFailure | None:
            if not (prompt.harmful or run.observe_benign):
                return label_row(prompt, None, run.max_rounds)
            async with limit:
                if run.stop_at is not None and time.monotonic() >= run.stop_at:
                    bar.update()
                    return None
                try:
                    response = await _complete(session, run, prompt)
                    return label_row(prompt, first_harmful_round(response, run.max_rounds), run.max_rounds)
                except (aiohttp.ClientError, TimeoutError, LabelsError) as error:
                    return LabelFailure(prompt.id, f"{type(error).__name__}: {error}")
                finally:
                    bar.update()

        results = await asyncio.gather(*(one(prompt) for prompt in prompts))
    bar.close()
    rows = [result for result in results if isinstance(result, LabelledRow)]
    failures = [result for result in results if isinstance(result, LabelFailure)]
    return rows, failures


def completions_url(base_url: str) -> str:
    """The chat completions URL for a gateway base URL given with or without its `/v1`."""
    base = base_url.rstrip("/")
    return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"


async def _complete(
    session: aiohttp.ClientSession, run: GatewayRun, prompt: LabelledPrompt
) -> Mapping[str, Any]:
    body = {
        "model": run.model,
        "messages": list(prompt.messages),
        "max_tokens": run.max_tokens,
        "temperature": 0,
    }
    async with session.post(completions_url(run.base_url), json=body) as response:
        if response.status != 200:
            text = await response.text()
            raise LabelsError(f"HTTP {response.status}: {text[:200]}")
        payload = await response.json(content_type=None)
    if not isinstance(payload, Mapping):
        raise LabelsError("the response is not a JSON object")
    return payload
