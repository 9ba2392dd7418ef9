"""What a run tells the client besides its text: its usage and the `twice` extension object."""

from __future__ import annotations

from typing import Any

from app.plan import Plan
from app.protocol.chat import CompletionTokensDetails, PromptTokensDetails, UsageInfo
from app.rounds import RoundsDecision
from refiners.backend import Usage
from refiners.base import Run


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
    run: Run, plan: Plan, request_id: str, rounds: RoundsDecision | None = None
) -> dict[str, Any]:
    """`rounds` adds how the psr rounds were chosen (asked, predicted, source) to `rounds`."""
    ledger = run.ledger
    extension: dict[str, Any] = {
        "request_id": request_id,
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
