"""One chat completion per (item, plan) through the official `openai` client, with transient retries.

The official client is what users of the gateway run, so every evaluation also checks that the gateway and
the SDK agree (URL layout, auth, error objects). `with_raw_response` gives the `X-Twice-*` response headers,
and the body is read as JSON so the `twice` extension and `usage` details come through whatever the SDK's
types know. The SDK's own retries are off (`max_retries=0`): tenacity retries here, only what is transient
(429, 5xx, connection errors and timeouts); any other error is recorded at once.

Every request asks the gateway for its trace (`X-Twice-Trace: 1`), of which a record keeps only the scored
steps (psr's verdicts, self_refine's comparison) without their prompts and outputs: the verdict scores an
item's outcome can be explained by, without the hidden texts the trace carries.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Final

import openai
from openai import AsyncOpenAI
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from evaluation.datasets import Item
from evaluation.plans import Plan

TRACE_HEADER: Final = "X-Twice-Trace"
SCORED_STEP_FIELDS: Final = (
    "strategy", "step", "round", "checkpoint", "score", "harmful", "off_format", "discarded"
)  # fmt: skip


def is_transient(error: BaseException) -> bool:
    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code == 429 or error.status_code >= 500
    return False


def retrying(retries: int, max_wait_s: float = 8.0) -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(retries + 1),
        # wait_exponential_jitter renamed its arguments across tenacity 8 and 9; this sum works in both.
        wait=wait_exponential(multiplier=0.25, max=max_wait_s) + wait_random(0, 0.25),
        reraise=True,
    )


def describe(error: BaseException) -> str:
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}"
    return f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class RequestSettings:
    model: str
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    retries: int = 3
    timeout_s: float = 300.0


@dataclass(frozen=True)
class Completion:
    text: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    twice: dict[str, Any] | None = None
    checks: list[dict[str, Any]] | None = None
    headers: dict[str, str] | None = None
    latency_s: float | None = None
    attempts: int = 0
    error: str | None = None


def _read_body(body: dict[str, Any]) -> tuple[str, str | None]:
    choices = body.get("choices") or [{}]
    message = choices[0].get("message") or {}
    return message.get("content") or "", choices[0].get("finish_reason")


def split_trace(twice: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """The `twice` extension without its trace, and the trace's scored steps without their texts (None when
    the endpoint sent no trace: not twice, or an older one)."""
    trace = twice.get("trace")
    rest = {key: value for key, value in twice.items() if key != "trace"}
    if not isinstance(trace, list):
        return rest, None
    scored = [step for step in trace if isinstance(step, dict) and step.get("score") is not None]
    return rest, [{key: step[key] for key in SCORED_STEP_FIELDS if key in step} for step in scored]


async def complete(client: AsyncOpenAI, item: Item, plan: Plan, settings: RequestSettings) -> Completion:
    """Send `item` under `plan`; errors come back in the result, never as exceptions."""
    messages: Any = [{"role": m.role, "content": m.content} for m in item.messages]
    attempts = 0
    try:
        async for attempt in retrying(settings.retries):
            with attempt:
                attempts += 1
                started = time.perf_counter()
                raw = await client.chat.completions.with_raw_response.create(
                    model=settings.model,
                    messages=messages,
                    max_tokens=max(settings.max_tokens, item.min_tokens),
                    temperature=settings.temperature,
                    seed=settings.seed,
                    extra_headers={TRACE_HEADER: "1", **plan.header_dict()},
                    timeout=settings.timeout_s,
                )
                body = json.loads(raw.http_response.text)
                latency = time.perf_counter() - started
    except (openai.OpenAIError, RetryError, json.JSONDecodeError) as error:
        return Completion(attempts=attempts, error=describe(error))
    text, finish_reason = _read_body(body)
    headers = {k.lower(): v for k, v in raw.headers.items() if k.lower().startswith("x-twice-")}
    twice, checks = split_trace(body["twice"]) if isinstance(body.get("twice"), dict) else (None, None)
    return Completion(
        text=text,
        finish_reason=finish_reason,
        usage=body.get("usage"),
        twice=twice,
        checks=checks,
        headers=headers,
        latency_s=latency,
        attempts=attempts,
    )
