"""Every rendered object against the Kubernetes OpenAPI schemas that kubernetes-validate carries offline.

Custom resources have no schema there: ServiceMonitor (monitoring.coreos.com/v1, the Prometheus Operator's
CRD) is the one the chart renders, and it is the one kind left out here, explicitly; its content is checked
in test_chart_objects.py instead.
"""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from tests.deploy.chart import KUBE_VERSION, VALUE_SETS, Manifest, render

NOT_IN_KUBERNETES_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def validate(obj: Manifest) -> None:
    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_rendered_object_is_valid_kubernetes(value_set: str) -> None:
    rendered = render(value_set)
    validated = []
    for obj in rendered.objects:
        if (obj["apiVersion"], obj["kind"]) in NOT_IN_KUBERNETES_SCHEMAS:
            continue
        try:
            validate(obj)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} in {value_set}: {exc}")
        validated.append(obj["kind"])
    assert {"Deployment", "Service", "ConfigMap"} <= set(validated)


@pytest.mark.parametrize(
    "value_set_and_overrides",
    [
        ("default", "vllm.enabled=true", "vllm.storage.type=hostPath", "gateway.backend=vllm"),
        ("default", "vllm.enabled=true", "vllm.storage.type=pvc", "vllm.storage.existingClaim=weights"),
        ("default", "redis.enabled=false", "redis.external.url=rediss://cache:6380/1"),
        ("gpu-values", "vllm.tensorParallelSize=4", "vllm.maxModelLen=0", "auth.vllmApiKey=k"),
    ],
)
def test_optional_shapes_are_valid_kubernetes(value_set_and_overrides: tuple[str, ...]) -> None:
    value_set, *overrides = value_set_and_overrides
    for obj in render(value_set, *overrides).objects:
        if (obj["apiVersion"], obj["kind"]) not in NOT_IN_KUBERNETES_SCHEMAS:
            validate(obj)


def test_validation_catches_a_broken_manifest() -> None:
    """The check above is only worth something if a wrong field fails it."""
    deployment = copy.deepcopy(render("default").of_kind("Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = [8000]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    deployment = copy.deepcopy(render("default").of_kind("Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = (
        True
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
