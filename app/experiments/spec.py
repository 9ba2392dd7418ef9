"""Experiments: the definition format, and the pure rule that assigns a subject to a variant.

An experiment is a name, a list of variants (the first is the control) and a paused flag. Each variant is a
plan in the header syntax (`strategies: "psr,self_refine"` or `"none"`, `rounds: "auto"` or an integer) with
a weight. Assignment hashes the experiment name and the subject (sha256 → a uniform number in [0, 1)) and
walks the cumulative weights, so a subject lands in the same variant on every replica and every restart, and
changing one weight moves only the subjects whose number crosses a boundary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.errors import InvalidRequest
from app.plan import Plan, Rounds, parse_rounds, parse_strategies
from app.settings import PlanSettings

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
VARIANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
MAX_VARIANTS = 8
MAX_EXPERIMENTS = 64
"""Bounds that keep the `variant` metric label a small closed set (variant names are validated above)."""


class VariantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=VARIANT_PATTERN)]
    weight: Annotated[float, Field(ge=0, le=1_000_000)] = 1.0
    strategies: Annotated[str, Field(min_length=1, max_length=200)] = "none"
    rounds: Annotated[str, Field(max_length=8)] | Annotated[int, Field(ge=0, le=64)] = "auto"

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, value: str) -> str:
        try:
            return ",".join(parse_strategies(value, "strategies")) or "none"
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None

    @field_validator("rounds")
    @classmethod
    def _rounds_syntax(cls, value: str | int) -> str | int:
        if isinstance(value, int):
            return value
        try:
            return parse_rounds(value, 64, "rounds")
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None

    def plan(self, max_rounds: int, *, trace: bool = False) -> Plan:
        source = f"variant {self.name!r} rounds"
        rounds: Rounds = parse_rounds(str(self.rounds), max_rounds, source)
        return Plan(strategies=parse_strategies(self.strategies, "strategies"), rounds=rounds, trace=trace)


class ExperimentSpec(BaseModel):
    """What the admin API accepts and the seed file lists."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: Annotated[str, Field(max_length=500)] = ""
    variants: Annotated[list[VariantSpec], Field(min_length=1, max_length=MAX_VARIANTS)]
    paused: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"variant {duplicates[0]!r} is named twice")
        if not any(v.weight > 0 for v in self.variants):
            raise ValueError("at least one variant needs a weight above 0")
        return self

    @property
    def control(self) -> VariantSpec:
        return self.variants[0]

    def check_rounds(self, settings: PlanSettings) -> None:
        """Every variant's rounds within this server's `max_rounds` (400 naming the variant otherwise)."""
        for variant in self.variants:
            variant.plan(settings.max_rounds)


@dataclass(frozen=True, slots=True)
class Experiment:
    spec: ExperimentSpec
    version: int

    @property
    def name(self) -> str:
        return self.spec.name

    def to_dict(self) -> dict[str, Any]:
        return {**self.spec.model_dump(), "version": self.version}


def uniform(experiment: str, subject: str) -> float:
    """A number in [0, 1) fixed by the experiment and the subject (the top 64 bits of a sha256)."""
    digest = hashlib.sha256(f"{experiment}\x00{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(spec: ExperimentSpec, subject: str) -> VariantSpec:
    """The variant `subject` belongs to: the paused experiment's control, else by weight."""
    if spec.paused:
        return spec.control
    total = sum(v.weight for v in spec.variants)
    point = uniform(spec.name, subject) * total
    cumulative = 0.0
    for variant in spec.variants:
        cumulative += variant.weight
        if point < cumulative and variant.weight > 0:
            return variant
    # Rounding can leave `point` a hair above the last boundary: the last variant with weight takes it.
    return next(v for v in reversed(spec.variants) if v.weight > 0)
