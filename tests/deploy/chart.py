"""Render the Helm chart with the real helm binary and look objects up in what it printed.

helm comes from `make helm` (deploy/deploy.mk) at .tools/helm. A missing binary fails the test that needs it,
with the command that installs it: these checks are part of `make test`, never skipped.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "deploy" / "helm" / "twice"
HELM = REPO_ROOT / ".tools" / "helm"
RELEASE = "demo"
NAMESPACE = "llm"
# The newest Kubernetes both helm v4 (client 1.35) and kubernetes-validate's offline schemas know.
KUBE_VERSION = "1.35.0"

# Value sets the chart is checked with: its defaults and every file under ci/.
VALUE_SETS: dict[str, Path | None] = {
    "default": None,
    **{path.stem: path for path in sorted((CHART_DIR / "ci").glob("*.yaml"))},
}

Manifest = dict[str, Any]


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    if not HELM.is_file():
        pytest.fail(
            f"helm is missing at {HELM}; install it with `make helm` (deploy/deploy.mk)", pytrace=False
        )
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO_ROOT
    )


def template_args(value_set: str, overrides: tuple[str, ...] = ()) -> list[str]:
    args = ["template", RELEASE, str(CHART_DIR), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    values_file = VALUE_SETS[value_set]
    if values_file is not None:
        args += ["--values", str(values_file)]
    for override in overrides:
        # `path:=json` for a value --set would read as a string (helm's --set keeps 0.15 a string).
        key, json_sep, json_value = override.partition(":=")
        args += ["--set-json", f"{key}={json_value}"] if json_sep else ["--set", override]
    return args


@dataclass(frozen=True)
class Rendered:
    objects: tuple[Manifest, ...]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def find(self, kind: str, component: str) -> Manifest | None:
        found = [obj for obj in self.of_kind(kind) if component_of(obj) == component]
        assert len(found) <= 1, f"{len(found)} {kind} objects for {component}"
        return found[0] if found else None

    def one(self, kind: str, component: str) -> Manifest:
        found = self.find(kind, component)
        assert found is not None, f"no {kind} for {component}; rendered: {self.summary()}"
        return found

    def summary(self) -> list[str]:
        return [f"{obj['kind']}/{obj['metadata']['name']}" for obj in self.objects]


@functools.cache
def render(value_set: str, *overrides: str) -> Rendered:
    """`helm template` of one value set (plus `--set` overrides); fails the test when helm does."""
    result = helm(*template_args(value_set, overrides))
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    objects = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    return Rendered(objects)


def render_error(value_set: str, *overrides: str) -> str:
    """stderr of a `helm template` that must fail."""
    result = helm(*template_args(value_set, overrides))
    assert result.returncode != 0, f"helm template accepted {overrides}"
    return result.stderr


def component_of(obj: Manifest) -> str:
    labels: dict[str, str] = obj["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component", "")


def pod_spec(workload: Manifest) -> Manifest:
    spec: Manifest = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def workloads(rendered: Rendered) -> Iterator[Manifest]:
    for kind in ("Deployment", "StatefulSet"):
        yield from rendered.of_kind(kind)


def container(workload: Manifest, name: str) -> Manifest:
    for candidate in pod_spec(workload)["containers"]:
        if candidate["name"] == name:
            found: Manifest = candidate
            return found
    raise AssertionError(f"no container {name} in {workload['metadata']['name']}")


def container_port(workload: Manifest, container_name: str, port_name: str) -> int:
    for port in container(workload, container_name).get("ports", []):
        if port["name"] == port_name:
            number: int = port["containerPort"]
            return number
    raise AssertionError(f"container {container_name} has no port named {port_name}")


def env_of(workload: Manifest, container_name: str) -> dict[str, Manifest]:
    return {item["name"]: item for item in container(workload, container_name).get("env", [])}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def values_of(value_set: str) -> Manifest:
    """The chart's defaults overlaid with one value set, as helm merges them (maps deep, lists replaced)."""
    merged: Manifest = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    values_file = VALUE_SETS[value_set]
    if values_file is not None:
        _merge(merged, yaml.safe_load(values_file.read_text()))
    return merged


def _merge(base: Manifest, overlay: Manifest) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
