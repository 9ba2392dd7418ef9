"""The backend as strategies see it: every call goes through a `Ledger`, which enforces the request's budget
(backend calls, deadline), counts tokens per strategy, times each call, keeps the trace and tells an observer
(the gateway's metrics) what happened. Strategies never hold the raw backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

from refiners.backend import (
    Backend,
    Completion,
    CompletionChunk,
    GenerationRequest,
    TokenDistribution,
    Usage,
)
from refiners.config import BudgetConfig

Purpose = Literal["generate", "verdict", "feedback", "refine", "compare", "questions", "answer", "role"]
VerdictResult = Literal["safe", "harmful", "off_format"]


class BudgetExhausted(Exception):
    """The request has used its backend calls or passed its deadline."""

    def __init__(self, reason: Literal["calls", "deadline"]) -> None:
        super().__init__(f"request budget exhausted: {reason}")
        self.reason = reason


class Observer(Protocol):
    """What the gateway wants to count. Every method must be cheap and must not raise."""

    def backend_call(self, strategy: str, purpose: str, seconds: float) -> None: ...

    def verdict(self, result: VerdictResult) -> None: ...

    def backtrack(self) -> None: ...

    def refusal(self, reason: str) -> None: ...

    def strategy_time(self, strategy: str, seconds: float) -> None: ...


class NullObserver:
    def backend_call(self, strategy: str, purpose: str, seconds: float) -> None:
        return None

    def verdict(self, result: VerdictResult) -> None:
        return None

    def backtrack(self) -> None:
        return None

    def refusal(self, reason: str) -> None:
        return None

    def strategy_time(self, strategy: str, seconds: float) -> None:
        return None


@dataclass(slots=True)
class TraceStep:
    strategy: str
    step: str
    round: int
    checkpoint: int
    prompt: list[dict[str, str]]
    output: str
    elapsed_ms: float
    score: float | None = None
    harmful: bool | None = None
    off_format: bool | None = None
    discarded: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def prompt_of(request: GenerationRequest) -> list[dict[str, str]]:
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    if request.prefix:
        messages.append({"role": "assistant", "content": request.prefix})
    return messages


@dataclass
class StrategyTokens:
    prompt: int = 0
    completion: int = 0
    cached: int = 0


@dataclass
class Ledger:
    backend: Backend
    budget: BudgetConfig
    tracing: bool = False
    observer: Observer = field(default_factory=NullObserver)
    routing_key: str | None = None
    model: str = ""
    started: float = field(default_factory=time.monotonic)
    calls: int = 0
    usage: Usage = field(default_factory=Usage)
    by_strategy: dict[str, StrategyTokens] = field(default_factory=dict)
    steps: list[TraceStep] = field(default_factory=list)

    # --- budget ------------------------------------------------------------------------------------------

    @property
    def deadline(self) -> float:
        return self.started + self.budget.deadline_s

    def remaining_calls(self) -> int:
        return self.budget.max_backend_calls - self.calls

    def _admit(self) -> None:
        if self.calls >= self.budget.max_backend_calls:
            raise BudgetExhausted("calls")
        if time.monotonic() >= self.deadline:
            raise BudgetExhausted("deadline")
        self.calls += 1

    def _with_routing(self, request: GenerationRequest) -> GenerationRequest:
        """Every call of the request carries its routing key and model."""
        return replace(
            request,
            routing_key=self.routing_key if self.routing_key is not None else request.routing_key,
            model=request.model or self.model,
        )

    # --- accounting --------------------------------------------------------------------------------------

    def _account(self, strategy: str, purpose: str, usage: Usage, seconds: float) -> None:
        self.usage = self.usage + usage
        tokens = self.by_strategy.setdefault(strategy, StrategyTokens())
        tokens.prompt += usage.prompt_tokens
        tokens.completion += usage.completion_tokens
        tokens.cached += usage.cached_tokens
        self.observer.backend_call(strategy, purpose, seconds)

    def trace(self, step: TraceStep) -> None:
        if self.tracing:
            self.steps.append(step)

    def mark_last_discarded(self, step_name: str) -> None:
        """Flag the latest traced step of that name as thrown away (a backtracked chunk)."""
        for step in reversed(self.steps):
            if step.step == step_name:
                step.discarded = True
                return

    # --- calls -------------------------------------------------------------------------------------------

    async def complete(
        self,
        strategy: str,
        purpose: Purpose,
        request: GenerationRequest,
        *,
        round: int = 0,
        checkpoint: int = 0,
    ) -> Completion:
        self._admit()
        started = time.monotonic()
        try:
            async with asyncio.timeout_at(self._loop_deadline()):
                result = await self.backend.complete(self._with_routing(request))
        except TimeoutError:
            raise BudgetExhausted("deadline") from None
        seconds = time.monotonic() - started
        self._account(strategy, purpose, result.usage, seconds)
        self.trace(
            TraceStep(strategy, purpose, round, checkpoint, prompt_of(request), result.text, seconds * 1000)
        )
        return result

    async def next_token(
        self,
        strategy: str,
        purpose: Purpose,
        request: GenerationRequest,
        top_logprobs: int,
    ) -> tuple[TokenDistribution, float]:
        """The first-token distribution and the seconds it took (the caller traces it with its verdict)."""
        self._admit()
        started = time.monotonic()
        try:
            async with asyncio.timeout_at(self._loop_deadline()):
                result = await self.backend.next_token(self._with_routing(request), top_logprobs)
        except TimeoutError:
            raise BudgetExhausted("deadline") from None
        seconds = time.monotonic() - started
        self._account(strategy, purpose, result.usage, seconds)
        return result, seconds

    async def stream(
        self, strategy: str, purpose: Purpose, request: GenerationRequest
    ) -> AsyncIterator[CompletionChunk]:
        self._admit()
        started = time.monotonic()
        chunks = self.backend.stream(self._with_routing(request))
        usage = Usage()
        parts: list[str] = []
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self._loop_deadline()):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise BudgetExhausted("deadline") from None
                if chunk.usage is not None:
                    usage = chunk.usage
                parts.append(chunk.text)
                yield chunk
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
            seconds = time.monotonic() - started
            self._account(strategy, purpose, usage, seconds)
            self.trace(TraceStep(strategy, purpose, 0, 0, prompt_of(request), "".join(parts), seconds * 1000))

    def _loop_deadline(self) -> float:
        """The deadline on the event loop's clock (time.monotonic and loop.time may differ)."""
        loop = asyncio.get_running_loop()
        return loop.time() + max(0.0, self.deadline - time.monotonic())
