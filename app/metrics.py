"""Prometheus metrics, built in one object over an injected registry (a fresh one per app and per test).

Names: `twice_<noun>_<unit>`; counters end `_total`, durations `_seconds`. Label values come only from closed
sets (endpoints, outcomes, purposes, token kinds), never from request text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from refiners.ledger import VerdictResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

OUTCOMES = ("ok", "client_error", "rate_limited", "backend_error", "server_error", "cancelled")


def outcome_of(status_code: int) -> str:
    if status_code < 400:
        return "ok"
    if status_code == 429:
        return "rate_limited"
    if status_code < 500:
        return "client_error"
    if status_code in (502, 503, 504):
        return "backend_error"
    return "server_error"


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "twice_requests_total",
            "Chat completion requests by outcome.",
            ["outcome", "stream"],
            registry=registry,
        )
        self.request_latency = Histogram(
            "twice_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "twice_time_to_first_token_seconds",
            "Time from request to the first content chunk of a streamed response.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.backend_latency = Histogram(
            "twice_backend_call_duration_seconds",
            "Duration of one backend call.",
            ["purpose"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "twice_tokens_total",
            "Tokens processed by the backend for clients, by kind.",
            ["kind"],
            registry=registry,
        )
        self.rounds = Counter(
            "twice_rounds_total", "psr reflection rounds, granted and used.", ["kind"], registry=registry
        )
        self.verdicts = Counter(
            "twice_verdicts_total", "psr self-check verdicts by result.", ["result"], registry=registry
        )
        self.backtracks = Counter(
            "twice_backtracks_total", "psr chunks discarded after a harmful verdict.", registry=registry
        )
        self.refusals = Counter(
            "twice_refusals_total", "Answers psr refused, by reason.", ["reason"], registry=registry
        )
        self.backend_calls = Counter(
            "twice_backend_calls_total",
            "Backend calls made by strategies, by purpose.",
            ["purpose"],
            registry=registry,
        )
        self.strategy_time = Histogram(
            "twice_strategy_duration_seconds",
            "Time spent in each strategy of a request.",
            ["strategy"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for outcome in OUTCOMES:
            for stream in ("true", "false"):
                self.requests.labels(outcome=outcome, stream=stream)

    def count_tokens(self, prompt: int, completion: int, hidden: int = 0) -> None:
        self.tokens.labels(kind="prompt").inc(prompt)
        self.tokens.labels(kind="completion").inc(completion)
        if hidden:
            self.tokens.labels(kind="reasoning").inc(hidden)


class MetricsObserver:
    """The strategies' `refiners.ledger.Observer`, counting into the gateway's metrics."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def backend_call(self, strategy: str, purpose: str, seconds: float) -> None:
        self._metrics.backend_calls.labels(purpose=purpose).inc()
        self._metrics.backend_latency.labels(purpose=purpose).observe(seconds)

    def verdict(self, result: VerdictResult) -> None:
        self._metrics.verdicts.labels(result=result).inc()

    def backtrack(self) -> None:
        self._metrics.backtracks.inc()

    def refusal(self, reason: str) -> None:
        self._metrics.refusals.labels(reason=reason).inc()

    def strategy_time(self, strategy: str, seconds: float) -> None:
        self._metrics.strategy_time.labels(strategy=strategy).observe(seconds)
