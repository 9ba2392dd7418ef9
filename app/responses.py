"""Building the OpenAI response objects (and the `twice` extension) from a finished or running request."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from app.plan import Plan
from app.protocol.chat import CompletionTokensDetails, PromptTokensDetails, UsageInfo
from app.rounds import RoundsDecision
from app.streaming import sse_event
from refiners.backend import Usage
from refiners.base import Run


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str
    created: int
    started: float
    model: str

    @classmethod
    def new(cls, model: str) -> RequestContext:
        return cls(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), time.perf_counter(), model)

    def headers(self) -> dict[str, str]:
        return {"X-Twice-Request-Id": self.request_id}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        return sse_event(
            {
                "id": self.request_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                **extra,
            }
        )

    def usage_chunk(self, usage: UsageInfo) -> bytes:
        return sse_event(
            {
                "id": self.request_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage.model_dump(exclude_none=True),
            }
        )


def usage_info(usage: Usage, visible_tokens: int | None = None) -> UsageInfo:
    """OpenAI usage; tokens generated but not sent to the client are reported as reasoning tokens."""
    hidden = 0 if visible_tokens is None else max(0, usage.completion_tokens - visible_tokens)
    return UsageInfo(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=hidden),
    )


def twice_extension(
    run: Run, plan: Plan, ctx: RequestContext, rounds: RoundsDecision | None = None
) -> dict[str, Any]:
    """`rounds` adds how the psr rounds were chosen (asked, predicted, source) to `rounds`."""
    ledger = run.ledger
    extension: dict[str, Any] = {
        "request_id": ctx.request_id,
        "strategies": list(plan.strategies),
        "required": list(plan.required),
        "rounds": {
            "granted": run.rounds,
            "used": run.rounds_used,
            **(rounds.to_dict() if rounds is not None and "psr" in plan.strategies else {}),
        },
        "backend_calls": ledger.calls,
        "backtracks": run.backtracks,
        "refused": run.refused,
        "tokens": {
            name: {"prompt": t.prompt, "completion": t.completion, "cached": t.cached}
            for name, t in ledger.by_strategy.items()
        },
    }
    if plan.trace:
        extension["trace"] = [step.to_dict() for step in ledger.steps]
    return extension


def plan_headers(plan: Plan, ctx: RequestContext) -> dict[str, str]:
    return {**ctx.headers(), "X-Twice-Strategy-Applied": plan.applied}
