"""The gateway's metrics (app/metrics.py): outcome classes, closed label sets created up front, names.

What a request counts through its account is in tests/app/test_account.py; the dashboard's queries against
these names in tests/deploy/test_dashboard.py.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from app.metrics import (
    CACHE_RESULTS,
    NO_VARIANT,
    OUTCOMES,
    Children,
    GatewayMetrics,
    MetricsObserver,
    outcome_of,
)
from app.rounds import ROUNDS_SOURCES


def fresh() -> GatewayMetrics:
    return GatewayMetrics(CollectorRegistry())


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "ok"),
        (204, "ok"),
        (304, "ok"),
        (399, "ok"),
        (400, "client_error"),
        (401, "client_error"),
        (404, "client_error"),
        (413, "client_error"),
        (428, "client_error"),
        (429, "rate_limited"),
        (431, "client_error"),
        (499, "client_error"),
        (500, "server_error"),
        (501, "server_error"),
        (502, "backend_error"),
        (503, "backend_error"),
        (504, "backend_error"),
        (505, "server_error"),
    ],
)
def test_a_status_code_maps_to_its_outcome(status: int, outcome: str) -> None:
    assert outcome_of(status) == outcome


def test_every_status_maps_into_the_closed_outcome_set() -> None:
    assert {outcome_of(status) for status in range(100, 600)} == set(OUTCOMES) - {"cancelled"}


def test_every_request_series_of_the_closed_sets_exists_at_zero_before_any_request() -> None:
    """So that rate() and dashboards see a series from the start, not only after its first event."""
    metrics = fresh()
    for outcome in OUTCOMES:
        for stream in ("true", "false"):
            labels = {"outcome": outcome, "stream": stream, "variant": NO_VARIANT}
            assert value(metrics, "twice_requests_total", **labels) == 0.0
    for result in CACHE_RESULTS:
        assert value(metrics, "twice_cache_lookups_total", result=result) == 0.0
    for result in ("written", "dropped", "overflow"):
        assert value(metrics, "twice_telemetry_entries_total", result=result) == 0.0
    for source in ROUNDS_SOURCES:
        assert value(metrics, "twice_rounds_granted_count", source=source, variant=NO_VARIANT) == 0.0


def test_no_series_exists_for_a_value_outside_the_closed_sets() -> None:
    metrics = fresh()
    assert value(metrics, "twice_requests_total", outcome="teapot", stream="true", variant=NO_VARIANT) is None
    assert value(metrics, "twice_tokens_total", kind="reasoning") is None


def test_names_follow_the_convention() -> None:
    """`twice_` everywhere; counters end `_total`; duration histograms end `_seconds`."""
    families = list(fresh().registry.collect())
    assert families
    for family in families:
        assert family.name.startswith("twice_"), family.name
        if family.type == "counter":
            assert all(sample.name.endswith(("_total", "_created")) for sample in family.samples), family.name
        if family.type == "histogram" and "duration" in family.name:
            assert family.name.endswith("_seconds"), family.name


def test_reasoning_tokens_are_counted_only_when_there_are_some() -> None:
    metrics = fresh()
    metrics.count_tokens(10, 4)
    assert value(metrics, "twice_tokens_total", kind="prompt") == 10
    assert value(metrics, "twice_tokens_total", kind="completion") == 4
    assert value(metrics, "twice_tokens_total", kind="reasoning") is None
    metrics.count_tokens(1, 2, hidden=3)
    assert value(metrics, "twice_tokens_total", kind="prompt") == 11
    assert value(metrics, "twice_tokens_total", kind="reasoning") == 3


def test_the_observer_counts_under_its_variant_and_calls_by_purpose() -> None:
    metrics = fresh()
    observer = MetricsObserver(metrics, "arm-b")
    observer.verdict("safe")
    observer.verdict("safe")
    observer.backtrack()
    observer.refusal("unsafe")
    observer.backend_call("psr", "verdict", 0.02)
    observer.strategy_time("psr", 0.3)
    assert value(metrics, "twice_verdicts_total", result="safe", variant="arm-b") == 2
    assert value(metrics, "twice_verdicts_total", result="safe", variant=NO_VARIANT) is None
    assert value(metrics, "twice_backtracks_total", variant="arm-b") == 1
    assert value(metrics, "twice_refusals_total", reason="unsafe", variant="arm-b") == 1
    assert value(metrics, "twice_backend_calls_total", purpose="verdict") == 1
    assert value(metrics, "twice_backend_call_duration_seconds_sum", purpose="verdict") == pytest.approx(0.02)
    assert value(metrics, "twice_strategy_duration_seconds_count", strategy="psr") == 1
    MetricsObserver(metrics).backtrack()
    assert value(metrics, "twice_backtracks_total", variant=NO_VARIANT) == 1


def test_upstream_health_sets_the_gauge_and_counts_only_changes() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    url = "http://10.0.0.1:8000"
    metrics.upstreams.health(url, True, changed=False)
    metrics.upstreams.health(url, False, changed=True)
    metrics.upstreams.health(url, False, changed=False)
    metrics.upstreams.health(url, True, changed=True)
    assert registry.get_sample_value("twice_upstream_healthy", {"upstream": url}) == 1
    assert (
        registry.get_sample_value("twice_upstream_health_changes_total", {"upstream": url, "state": "down"})
        == 1
    )
    assert (
        registry.get_sample_value("twice_upstream_health_changes_total", {"upstream": url, "state": "up"})
        == 1
    )
    metrics.upstreams.call(url)
    metrics.upstreams.affinity_break()
    assert registry.get_sample_value("twice_upstream_calls_total", {"upstream": url}) == 1
    assert registry.get_sample_value("twice_affinity_breaks_total") == 1


def test_a_forgotten_upstream_loses_its_gauge_and_forgetting_twice_is_harmless() -> None:
    registry = CollectorRegistry()
    upstreams = GatewayMetrics(registry).upstreams
    url = "http://10.0.0.2:8000"
    upstreams.health(url, False, changed=True)
    upstreams.forget(url)
    assert registry.get_sample_value("twice_upstream_healthy", {"upstream": url}) is None
    upstreams.forget(url)
    upstreams.forget("http://never-seen:1")


def test_two_gateways_metrics_on_their_own_registries_do_not_collide() -> None:
    first, second = fresh(), fresh()
    first.count_tokens(5, 5)
    assert value(second, "twice_tokens_total", kind="prompt") is None


def test_cached_children_count_into_the_series_of_their_label_values() -> None:
    metrics = fresh()
    children = Children(metrics.request_latency)
    assert children("true", "b") is children("true", "b")
    assert children("true", "b") is metrics.request_latency.labels(stream="true", variant="b")
    children("true", "b").observe(0.2)
    metrics.latency_of("false", "a").observe(0.1)
    metrics.count_tokens(3, 5)
    metrics.upstreams.call("http://u1")
    assert value(metrics, "twice_request_duration_seconds_count", stream="true", variant="b") == 1
    assert value(metrics, "twice_request_duration_seconds_count", stream="false", variant="a") == 1
    assert value(metrics, "twice_request_duration_seconds_count", stream="false", variant="b") is None
    assert value(metrics, "twice_tokens_total", kind="completion") == 5
    assert value(metrics, "twice_upstream_calls_total", upstream="http://u1") == 1
