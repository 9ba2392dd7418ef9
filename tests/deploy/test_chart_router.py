"""The optional vLLM production-stack router (router.enabled): its objects, its routing flags, and the
gateway's settings pointing at it with the same routing header (docs/scaleout.md)."""

from __future__ import annotations

import pytest

from app.settings import Settings
from tests.deploy.chart import container, pod_labels, pod_spec, render, render_error, selects, values_of
from tests.deploy.test_chart_settings import gateway_environment, settings_from

ROUTER = "router-values"


def args_of(value_set: str, *overrides: str) -> dict[str, str]:
    router = render(value_set, *overrides).one("Deployment", "router")
    flags = container(router, "router")["args"]
    return dict(flag.removeprefix("--").split("=", 1) for flag in flags)


def test_router_deployment_and_service_render_with_session_routing_on_the_gateway_header() -> None:
    rendered = render(ROUTER)
    router = rendered.one("Deployment", "router")
    service = rendered.one("Service", "router")
    assert selects(service["spec"]["selector"], pod_labels(router))
    assert container(router, "router")["image"].startswith("lmcache/lmstack-router:")
    args = args_of(ROUTER)
    header = values_of(ROUTER)["gateway"]["routingHeader"]
    assert args["routing-logic"] == "session"
    assert args["session-key"] == header == "X-Twice-Routing-Key"
    assert args["service-discovery"] == "k8s"
    assert args["port"] == str(service["spec"]["ports"][0]["port"])
    assert router["spec"]["replicas"] == values_of(ROUTER)["router"]["replicaCount"]


def test_router_discovers_exactly_the_releases_vllm_pods_on_their_port() -> None:
    rendered = render(ROUTER)
    args = args_of(ROUTER)
    selector = dict(pair.split("=", 1) for pair in args["k8s-label-selector"].split(","))
    assert selects(selector, pod_labels(rendered.one("Deployment", "vllm")))
    assert not selects(selector, pod_labels(rendered.one("Deployment", "gateway")))
    assert args["k8s-namespace"] == "llm"
    assert args["k8s-port"] == str(
        container(rendered.one("Deployment", "vllm"), "vllm")["ports"][0]["containerPort"]
    )


def test_router_may_watch_pods_and_nothing_else() -> None:
    rendered = render(ROUTER)
    role = rendered.one("Role", "router")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = rendered.one("RoleBinding", "router")
    account = rendered.one("ServiceAccount", "router")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "llm"}
    ]
    spec = pod_spec(rendered.one("Deployment", "router"))
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    # No automatic token; the one it needs is projected (expiring) at the path the Kubernetes client reads.
    assert spec["automountServiceAccountToken"] is False
    [volume] = [v for v in spec["volumes"] if "projected" in v]
    assert {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}} in volume["projected"][
        "sources"
    ]
    mounts = {
        m["name"]: m["mountPath"]
        for m in container(rendered.one("Deployment", "router"), "router")["volumeMounts"]
    }
    assert mounts[volume["name"]] == "/var/run/secrets/kubernetes.io/serviceaccount"


def test_gateway_settings_point_at_the_router_with_the_same_header(monkeypatch: pytest.MonkeyPatch) -> None:
    rendered = render(ROUTER)
    service = rendered.one("Service", "router")
    settings: Settings = settings_from(gateway_environment(ROUTER), monkeypatch)
    assert settings.backend == "vllm"
    assert (
        settings.vllm.upstream
        == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    )
    assert settings.vllm.routing_header == args_of(ROUTER)["session-key"]


def test_a_custom_routing_header_reaches_both_the_router_and_the_gateway() -> None:
    overrides = ("gateway.routingHeader=X-Session-Id",)
    assert args_of(ROUTER, *overrides)["session-key"] == "X-Session-Id"
    data = render(ROUTER, *overrides).one("ConfigMap", "gateway")["data"]
    assert data["TWICE_VLLM__ROUTING_HEADER"] == "X-Session-Id"


def test_prefix_aware_routing_needs_no_session_key() -> None:
    args = args_of(ROUTER, "router.routingLogic=prefixaware")
    assert args["routing-logic"] == "prefixaware"
    assert "session-key" not in args


def test_only_the_gateway_reaches_the_router_and_the_router_reaches_vllm() -> None:
    rendered = render(ROUTER)
    [rule] = rendered.one("NetworkPolicy", "router")["spec"]["ingress"]
    [peer] = rule["from"]
    assert selects(peer["podSelector"]["matchLabels"], pod_labels(rendered.one("Deployment", "gateway")))
    [vllm_rule] = rendered.one("NetworkPolicy", "vllm")["spec"]["ingress"]
    router_pods = pod_labels(rendered.one("Deployment", "router"))
    assert any(selects(p["podSelector"]["matchLabels"], router_pods) for p in vllm_rule["from"])


def test_no_router_by_default_and_none_without_the_releases_vllm() -> None:
    for value_set in ("default", "cpu-values", "gpu-values"):
        assert render(value_set).find("Deployment", "router") is None
    assert "needs vllm.enabled" in render_error("default", "router.enabled=true", "gateway.backend=vllm")
    assert "routingLogic" in render_error(ROUTER, "router.routingLogic=random")
