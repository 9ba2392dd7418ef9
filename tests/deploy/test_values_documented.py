"""Every value in values.yaml is documented (`## @param`) and typed in values.schema.json."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import yaml

from tests.deploy.chart import CHART_DIR

PARAM = re.compile(r"^\s*## @param (\S+) (\S.*)$", re.MULTILINE)
# Kubernetes objects passed through as they are (resources, securityContext, ...): documented and typed as a
# whole, not key by key.
OPAQUE_KEYS = {
    "commonLabels", "resources", "podSecurityContext", "containerSecurityContext", "podAnnotations",
    "podLabels", "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "annotations",
    "behavior", "labels",
}  # fmt: skip


def values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    return loaded


def documented() -> dict[str, str]:
    return dict(PARAM.findall((CHART_DIR / "values.yaml").read_text()))


def value_paths(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the leaves, stopping at opaque Kubernetes objects."""
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in OPAQUE_KEYS:
            yield from value_paths(value, f"{path}.")
        else:
            yield path


def schema_node(schema: dict[str, Any], path: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for key in path.split("."):
        node = (node or {}).get("properties", {}).get(key)
    return node


def test_every_value_has_a_param_comment() -> None:
    params = documented()
    missing = [path for path in value_paths(values()) if path not in params]
    assert not missing, f"values without `## @param`: {missing}"


def test_every_param_comment_names_a_value() -> None:
    paths = set(value_paths(values()))
    stale = [name for name in documented() if name not in paths]
    assert not stale, f"`## @param` for values that do not exist: {stale}"


def test_every_value_is_typed_in_the_schema() -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    untyped = [path for path in value_paths(values()) if not (schema_node(schema, path) or {}).get("type")]
    assert not untyped, f"values missing from values.schema.json: {untyped}"
