"""Prometheus metrics, built in one object over an injected registry (a fresh one per app and per test).

Names: `twice_<noun>_<unit>`; counters end `_total`, durations `_seconds`. Label values come only from closed
sets (endpoints, outcomes, purposes, token kinds, the operator's experiment variants), never from request
text. The A/B metrics (requests, latency, time to first token, rounds, verdicts, backtracks, refusals) carry
the request's `variant`.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.rounds import ROUNDS_SOURCES
from refiners.ledger import VerdictResult

ROUNDS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

OUTCOMES = ("ok", "client_error", "rate_limited", "backend_error", "server_error", "cancelled")

CACHE_RESULTS = ("hit", "miss", "skipped")

NO_VARIANT = "none"
"""The `variant` label of a request no experiment serves."""

MetricT = TypeVar("MetricT", Counter, Gauge, Histogram)


class Children(Generic[MetricT]):
    """A labelled metric's children by their label values (in the metric's label order), each asked of
    prometheus_client once: its `labels()` validates and locks on every call (2.4 us), which every request
    paid five times. Label values come from closed sets, so this holds no more children than the metric."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: MetricT) -> None:
        self._metric: MetricT = metric
        self._children: dict[tuple[str, ...], MetricT] = {}

    def __call__(self, *values: str) -> MetricT:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class RequestCounter:
    """`twice_requests_total{outcome, stream, variant}`, counted by each request's account."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "twice_requests_total",
            "Chat completion requests by outcome and experiment variant.",
            ["outcome", "stream", "variant"],
            registry=registry,
        )
        self._children = Children(self.counter)

    def labels(self, *, outcome: str, stream: str, variant: str = NO_VARIANT) -> Counter:
        return self._children(outcome, stream, variant)


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


class UpstreamMetrics:
    """The vLLM upstream pool's metrics (app/upstreams.py `UpstreamObserver`). `upstream` label values are
    only the configured or DNS-discovered base URLs, never anything a client sends."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "twice_upstream_calls_total", "Calls sent to each vLLM upstream.", ["upstream"], registry=registry
        )
        self.affinity_breaks = Counter(
            "twice_affinity_breaks_total",
            "Requests whose backend calls landed on more than one vLLM upstream (a replica failed mid-way).",
            registry=registry,
        )
        self.healthy = Gauge(
            "twice_upstream_healthy",
            "1 while the upstream is in the pool, 0 while health checks keep it out.",
            ["upstream"],
            registry=registry,
        )
        self.health_changes = Counter(
            "twice_upstream_health_changes_total",
            "Upstreams leaving (`down`) or rejoining (`up`) the pool.",
            ["upstream", "state"],
            registry=registry,
        )
        self._calls = Children(self.calls)

    def call(self, upstream: str) -> None:
        self._calls(upstream).inc()

    def affinity_break(self) -> None:
        self.affinity_breaks.inc()

    def health(self, upstream: str, healthy: bool, changed: bool) -> None:
        self.healthy.labels(upstream=upstream).set(1 if healthy else 0)
        if changed:
            self.health_changes.labels(upstream=upstream, state="up" if healthy else "down").inc()

    def forget(self, upstream: str) -> None:
        """An upstream DNS no longer lists: drop its gauge so a gone pod does not read as down forever."""
        try:
            self.healthy.remove(upstream)
        except KeyError:
            return


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = RequestCounter(registry)
        self.request_latency = Histogram(
            "twice_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["stream", "variant"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "twice_time_to_first_token_seconds",
            "Time from request to the first content chunk of a streamed response.",
            ["variant"],
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
            "twice_rounds_total",
            "psr reflection rounds, granted and used.",
            ["kind", "variant"],
            registry=registry,
        )
        self.rounds_granted = Histogram(
            "twice_rounds_granted",
            "psr rounds granted per request, by how they were chosen (app/rounds.py).",
            ["source", "variant"],
            buckets=ROUNDS_BUCKETS,
            registry=registry,
        )
        self.telemetry = Counter(
            "twice_telemetry_entries_total",
            "Telemetry stream entries: written; dropped (Redis down, slow, refusing); overflow (queue full).",
            ["result"],
            registry=registry,
        )
        self.verdicts = Counter(
            "twice_verdicts_total",
            "psr self-check verdicts by result.",
            ["result", "variant"],
            registry=registry,
        )
        self.backtracks = Counter(
            "twice_backtracks_total",
            "psr chunks discarded after a harmful verdict.",
            ["variant"],
            registry=registry,
        )
        self.refusals = Counter(
            "twice_refusals_total",
            "Answers psr refused, by reason.",
            ["reason", "variant"],
            registry=registry,
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
        self.cache_lookups = Counter(
            "twice_cache_lookups_total", "Response cache lookups by result.", ["result"], registry=registry
        )
        self.cache_evictions = Counter(
            "twice_cache_evictions_total",
            "Cached answers evicted to keep the cache within cache.max_entries.",
            registry=registry,
        )
        self.redis_errors = Counter(
            "twice_redis_errors_total", "Redis commands that failed or timed out.", registry=registry
        )
        self.redis_up = Gauge(
            "twice_redis_up", "1 while Redis answers, 0 while the gateway runs without it.", registry=registry
        )
        self.upstreams = UpstreamMetrics(registry)
        self.latency_of = Children(self.request_latency)
        """`latency_of(stream, variant)`: the request latency histogram's child."""
        self.time_to_first_token_of = Children(self.time_to_first_token)
        self._tokens = Children(self.tokens)
        for source in ROUNDS_SOURCES:
            self.rounds_granted.labels(source=source, variant=NO_VARIANT)
        for result in ("written", "dropped", "overflow"):
            self.telemetry.labels(result=result)
        for result in CACHE_RESULTS:
            self.cache_lookups.labels(result=result)
        for outcome in OUTCOMES:
            for stream in ("true", "false"):
                self.requests.labels(outcome=outcome, stream=stream, variant=NO_VARIANT)

    def count_tokens(self, prompt: int, completion: int, hidden: int = 0) -> None:
        self._tokens("prompt").inc(prompt)
        self._tokens("completion").inc(completion)
        if hidden:
            self._tokens("reasoning").inc(hidden)


class MetricsObserver:
    """The strategies' `refiners.ledger.Observer` for one request, counting into the gateway's metrics under
    the request's experiment variant."""

    __slots__ = ("_metrics", "_variant")

    def __init__(self, metrics: GatewayMetrics, variant: str = NO_VARIANT) -> None:
        self._metrics = metrics
        self._variant = variant

    def backend_call(self, strategy: str, purpose: str, seconds: float) -> None:
        self._metrics.backend_calls.labels(purpose=purpose).inc()
        self._metrics.backend_latency.labels(purpose=purpose).observe(seconds)

    def verdict(self, result: VerdictResult) -> None:
        self._metrics.verdicts.labels(result=result, variant=self._variant).inc()

    def backtrack(self) -> None:
        self._metrics.backtracks.labels(variant=self._variant).inc()

    def refusal(self, reason: str) -> None:
        self._metrics.refusals.labels(reason=reason, variant=self._variant).inc()

    def strategy_time(self, strategy: str, seconds: float) -> None:
        self._metrics.strategy_time.labels(strategy=strategy).observe(seconds)
