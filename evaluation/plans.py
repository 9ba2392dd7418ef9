"""Plans: named sets of request headers, each run over every item (`--plan`, `--plans FILE.json`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STRATEGY_HEADER = "X-Twice-Strategy"
ROUNDS_HEADER = "X-Twice-Rounds"
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")
_HEADER_NAME = re.compile(r"\A[A-Za-z0-9-]+\Z")


class PlanError(ValueError):
    """A plan that cannot be used: bad name, bad header, duplicate."""


@dataclass(frozen=True)
class Plan:
    name: str
    headers: tuple[tuple[str, str], ...] = ()

    def header_dict(self) -> dict[str, str]:
        return dict(self.headers)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)

    @property
    def psr_rounds(self) -> int | None:
        """The fixed psr rounds this plan asks for, or None (no psr, or `auto`)."""
        strategies = [s.strip() for s in (self.header(STRATEGY_HEADER) or "").split(",")]
        rounds = self.header(ROUNDS_HEADER)
        if "psr" not in strategies or rounds is None or not rounds.strip().isdigit():
            return None
        return int(rounds)

    def without_rounds(self) -> tuple[tuple[str, str], ...]:
        """The headers other than the rounds: plans equal here differ only by psr rounds."""
        return tuple(sorted((k.lower(), v) for k, v in self.headers if k.lower() != ROUNDS_HEADER.lower()))


def _checked(name: str, headers: Iterable[tuple[str, str]]) -> Plan:
    if not _NAME.match(name):
        raise PlanError(f"plan name {name!r}: use letters, digits and _ . + -")
    pairs = tuple((key.strip(), value.strip()) for key, value in headers)
    for key, value in pairs:
        if not _HEADER_NAME.match(key):
            raise PlanError(f"plan {name!r}: bad header name {key!r}")
        if "\n" in value or "\r" in value:
            raise PlanError(f"plan {name!r}: header {key!r} has a line break")
    keys = [key.lower() for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise PlanError(f"plan {name!r}: a header is given twice")
    return Plan(name, pairs)


def parse_plan(text: str) -> Plan:
    """`NAME=Header:value,Header:value`; a segment without `:` continues the previous value.

    So `psr_sr=X-Twice-Strategy:psr,self_refine,X-Twice-Rounds:2` keeps the comma list of strategies, and
    `default=` is a plan with no headers (the server's default plan).
    """
    name, equals, spec = text.partition("=")
    if not equals:
        raise PlanError(f"plan {text!r}: expected NAME=Header:value,...")
    headers: list[list[str]] = []
    for segment in filter(None, (s.strip() for s in spec.split(","))):
        key, colon, value = segment.partition(":")
        if colon:
            headers.append([key, value])
        elif headers:
            headers[-1][1] += "," + segment
        else:
            raise PlanError(f"plan {name!r}: {segment!r} is not Header:value")
    return _checked(name.strip(), ((key, value) for key, value in headers))


def load_plans_file(path: Path) -> list[Plan]:
    """`{"name": {"Header": "value", ...}, ...}` or `[{"name": ..., "headers": {...}}, ...]`."""
    data: Any = json.loads(path.read_text(encoding="utf-8"))
    entries: list[tuple[str, Mapping[str, Any]]]
    if isinstance(data, dict):
        entries = [(str(name), headers) for name, headers in data.items()]
    elif isinstance(data, list):
        entries = [(str(entry["name"]), entry.get("headers", {})) for entry in data]
    else:
        raise PlanError(f"{path}: expected an object or a list of plans")
    plans = []
    for name, headers in entries:
        if not isinstance(headers, Mapping):
            raise PlanError(f"{path}: plan {name!r}: headers must be an object")
        plans.append(_checked(name, ((str(k), str(v)) for k, v in headers.items())))
    return plans


def unique(plans: Iterable[Plan]) -> list[Plan]:
    result: list[Plan] = []
    for plan in plans:
        if any(existing.name == plan.name for existing in result):
            raise PlanError(f"plan {plan.name!r} is given twice")
        result.append(plan)
    return result
