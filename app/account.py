"""One account per chat request: opened when the request arrives, closed exactly once, and every
request-level fact is counted there: the request and its outcome, latency, time to first token, psr rounds
and verdicts (under the request's experiment variant), tokens, telemetry, and (through the gate's `Keeper`)
the cache entry, the experiment result and the tokens spent against the caller's limit.

The facts come from where they are known: a fresh answer's from its run (the renderer reports its text,
finish reason and usage), a cache hit's from its entry, and only the pass-through's from the relayed bytes
(app/passthrough.py). The account never reads a response back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from app.metrics import NO_VARIANT, GatewayMetrics, MetricsObserver
from app.plan import Plan
from app.protocol.chat import UsageInfo
from app.render import Ending
from app.rounds import RoundsDecision
from app.telemetry import Telemetry
from refiners.base import Run


@dataclass(frozen=True, slots=True)
class Answered:
    """What an answer said: its text, why it ended, its usage (None when unknown)."""

    text: str
    finish_reason: str | None
    usage: UsageInfo | None
    complete: bool = True
    """It ended normally (a relayed stream: it reached [DONE] with no error event)."""
    plain: bool = True
    """One choice of assistant text (a relayed answer may hold several, or tool calls): it can be cached."""

    def tokens(self) -> tuple[int, int] | None:
        usage = self.usage
        return None if usage is None else (usage.prompt_tokens, usage.completion_tokens)


class Keeper(Protocol):
    """What the gate does with a complete answer (app/gate.py): cache it, record it, spend its tokens."""

    async def __call__(self, request_id: str, answer: Answered, latency_s: float) -> None: ...


@dataclass(frozen=True, slots=True)
class _RunFacts:
    run: Run
    plan: Plan
    rounds: RoundsDecision


class Account:
    """The request's account. Set `stream`, `variant`, `request_id`, `cache_hit` and `keeper` as they
    become known; report the answer (`answered`, or `relayed` for the pass-through); `close` once."""

    def __init__(self, metrics: GatewayMetrics, telemetry: Telemetry | None = None) -> None:
        self.started = time.perf_counter()
        self.stream = False
        self.variant = NO_VARIANT
        """The experiment variant serving the request (a configured variant name, or `none`)."""
        self.request_id = ""
        self.cache_hit = False
        """Replayed from the cache: the backend spent no tokens on it."""
        self.keeper: Keeper | None = None
        self._metrics = metrics
        self._telemetry = telemetry
        self._run: _RunFacts | None = None
        self._answer: Answered | None = None
        self._first_text = False
        self._closed = False

    @property
    def keeps_answers(self) -> bool:
        """Whether the answer's text is wanted (the pass-through then reads every relayed event)."""
        return self.keeper is not None

    def observer(self) -> MetricsObserver:
        """The ledger's observer for this request: verdicts, backtracks and refusals under its variant."""
        return MetricsObserver(self._metrics, self.variant)

    def rounds_decided(self, decision: RoundsDecision) -> None:
        self._metrics.rounds_granted.labels(source=decision.source, variant=self.variant).observe(
            decision.granted
        )

    def run_started(self, run: Run, plan: Plan, rounds: RoundsDecision) -> None:
        self._run = _RunFacts(run, plan, rounds)

    # --- the renderer's listener (app/render.py) ------------------------------------------------------

    def first_text(self) -> None:
        """The first text went out: time to first token, for streams (a JSON body has no first token)."""
        if self.stream and not self._first_text:
            self._first_text = True
            self._metrics.time_to_first_token_of(self.variant).observe(time.perf_counter() - self.started)

    def answered(self, text: str, ending: Ending) -> None:
        self._answer = Answered(text, ending.finish_reason, ending.usage)

    def relayed(self, answer: Answered) -> None:
        self._answer = answer

    async def close(self, outcome: str) -> None:
        """Count the request once (`outcome`: one of `app.metrics.OUTCOMES`); a complete answer then goes to
        the keeper. Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        latency = time.perf_counter() - self.started
        stream = "true" if self.stream else "false"
        metrics = self._metrics
        metrics.requests.labels(outcome=outcome, stream=stream, variant=self.variant).inc()
        metrics.latency_of(stream, self.variant).observe(latency)
        answer = self._answer
        if answer is not None and answer.usage is not None and not self.cache_hit:
            details = answer.usage.completion_tokens_details
            metrics.count_tokens(
                answer.usage.prompt_tokens,
                answer.usage.completion_tokens,
                details.reasoning_tokens if details is not None else 0,
            )
        if self._run is not None:
            self._close_run(self._run, outcome, answered=answer is not None)
        if outcome == "ok" and answer is not None and answer.complete and self.keeper is not None:
            await self.keeper(self.request_id, answer, latency)

    def _close_run(self, facts: _RunFacts, outcome: str, *, answered: bool) -> None:
        run = facts.run
        if answered and run.rounds:
            self._metrics.rounds.labels(kind="granted", variant=self.variant).inc(run.rounds)
            self._metrics.rounds.labels(kind="used", variant=self.variant).inc(run.rounds_used)
        # One telemetry entry per finished psr request; none for one cancelled before its answer (its run is
        # partial).
        if self._telemetry is None or "psr" not in facts.plan.strategies:
            return
        if answered:
            self._telemetry.record(run, facts.rounds, "refused" if run.refused else "answered")
        elif outcome != "cancelled":
            self._telemetry.record(run, facts.rounds, "error")
