"""The Grafana dashboard: its data source is a variable, its queries name real metrics, its panels fit."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client import CollectorRegistry

from app.metrics import GatewayMetrics
from tests.deploy.chart import REPO_ROOT

DASHBOARD = REPO_ROOT / "deploy" / "dashboards" / "twice-gateway.json"
DOCS = REPO_ROOT / "docs" / "deploy.md"
METRIC = re.compile(r"\b(twice_[a-z_]+?)(?:_bucket|_count|_sum)?\b(?=\s*[{\[)])")
DOC_ROW = re.compile(r"^\| `(twice_[a-z_]+)` \|\s*([a-z_, ]*?)\s*\|", re.MULTILINE)
SCRAPE_LABELS = {"namespace", "job"}
GRID_COLUMNS = 24


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def expressions() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def queried_metrics() -> set[str]:
    return {name for expr in expressions() for name in METRIC.findall(expr)}


def documented_metrics() -> dict[str, set[str]]:
    return {
        name: {label.strip() for label in labels.split(",") if label.strip()}
        for name, labels in DOC_ROW.findall(DOCS.read_text())
    }


def test_data_source_is_a_variable_used_everywhere() -> None:
    variables = {variable["name"]: variable for variable in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_query_is_narrowed_by_the_namespace_and_job_variables() -> None:
    for expr in expressions():
        selectors = re.findall(r"twice_[a-z_]+\{([^}]*)\}", expr)
        assert selectors, expr
        for selector in selectors:
            assert 'namespace=~"$namespace"' in selector, expr
            assert 'job=~"$job"' in selector, expr


def test_queries_are_balanced() -> None:
    for expr in expressions():
        for opening, closing in ("()", "{}", "[]"):
            assert expr.count(opening) == expr.count(closing), expr


def test_every_queried_metric_is_documented_with_its_labels() -> None:
    documented = documented_metrics()
    assert queried_metrics() <= set(documented), queried_metrics() - set(documented)
    for expr in expressions():
        grouped = {
            label.strip() for clause in re.findall(r"by \(([^)]*)\)", expr) for label in clause.split(",")
        }
        matched = set(re.findall(r"([a-z_]+)\s*[!=]~?\s*\"", expr))
        known = set().union(*(documented[metric] for metric in METRIC.findall(expr)))
        unknown = (grouped | matched) - known - SCRAPE_LABELS - {"le"}
        assert not unknown, f"{expr}: labels not documented for its metrics: {unknown}"


def test_every_metric_the_gateway_exports_is_on_the_dashboard_and_documented() -> None:
    exported = {
        metric.name if metric.type != "counter" else f"{metric.name}_total"
        for metric in GatewayMetrics(CollectorRegistry()).registry.collect()
    }
    assert exported, "GatewayMetrics registered nothing"
    assert exported <= queried_metrics(), exported - queried_metrics()
    assert exported <= set(documented_metrics()), exported - set(documented_metrics())


def test_traffic_latency_reflection_backend_and_cache_are_all_covered() -> None:
    queried = queried_metrics()
    for needed in (
        "twice_requests_total",
        "twice_request_duration_seconds",
        "twice_time_to_first_token_seconds",
        "twice_rounds_total",
        "twice_verdicts_total",
        "twice_backtracks_total",
        "twice_refusals_total",
        "twice_backend_calls_total",
        "twice_cache_lookups_total",
        "twice_redis_up",
    ):
        assert needed in queried, needed
    assert any("by (variant)" in expr and "twice_requests_total" in expr for expr in expressions())
    assert any(
        "histogram_quantile(0.99" in expr and "twice_request_duration_seconds" in expr
        for expr in expressions()
    )


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    all_panels = dashboard()["panels"]
    ids = [panel["id"] for panel in all_panels]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
