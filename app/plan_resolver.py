"""The plan a request runs, resolved once before it is served, as one frozen value the rest only reads.

In order: the X-Twice-* headers (else the server's default plan), then the experiment arm, which replaces the
strategies and rounds, then the operator's required strategies (`TWICE_PLAN__REQUIRED`), which neither a
client nor an arm can remove.

Experiment: the one named by `X-Twice-Experiment` (400 if unknown), else the server's default experiment
(ignored with a warning if unknown), else none. An explicit `X-Twice-Strategy` leaves the experiment only when
`allow_override` is on. The subject assigned is the request's `user`, else `X-Twice-Subject`, else the API
key's id, else the client address. A paused experiment serves its control (first) variant to everyone and
counts nothing, so its results compare randomly assigned requests only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from app.auth import Caller
from app.errors import InvalidRequest
from app.experiments.results import Attribution
from app.experiments.spec import Experiment, assign
from app.metrics import NO_VARIANT
from app.plan import STRATEGY_HEADER, Plan, parse_plan, with_required
from app.settings import Settings

log = logging.getLogger("twice.plan")

EXPERIMENT_HEADER = "X-Twice-Experiment"
SUBJECT_HEADER = "X-Twice-Subject"
VARIANT_HEADER = "X-Twice-Variant"


class Definitions(Protocol):
    """Where experiments are looked up by name (`app.experiments.store.ExperimentStore`)."""

    def get(self, name: str) -> Experiment | None: ...


@dataclass(frozen=True, slots=True)
class Arm:
    """The experiment variant that serves a request."""

    experiment: str
    variant: str
    counted: bool
    """Its outcome counts in the experiment's results (not while the experiment is paused)."""


@dataclass(frozen=True, slots=True)
class ResolvedPlan:
    plan: Plan
    arm: Arm | None = None

    @property
    def variant(self) -> str:
        """The metric label: the serving variant's name, or `none` outside an experiment."""
        return self.arm.variant if self.arm is not None else NO_VARIANT

    @property
    def attribution(self) -> Attribution | None:
        """Whom the request's outcome is recorded for; None when nothing counts it."""
        arm = self.arm
        return Attribution(arm.experiment, arm.variant) if arm is not None and arm.counted else None

    def extension(self) -> dict[str, Any]:
        """The fields the `twice` object of the answer gains."""
        arm = self.arm
        return {} if arm is None else {"experiment": arm.experiment, "variant": arm.variant}

    def headers(self) -> dict[str, str]:
        return {} if self.arm is None else {VARIANT_HEADER: self.arm.variant}


def subject_of(user: object, headers: Mapping[str, str], caller: Caller) -> str:
    """Who is assigned to a variant; `user` is the request body's field of that name."""
    # `user` and X-Twice-Subject both name the end user, so the same name lands alike either way.
    if isinstance(user, str) and user:
        return user
    subject = headers.get(SUBJECT_HEADER.lower())
    if subject:
        return subject
    if caller.key_id:
        return "key:" + caller.key_id
    return "addr:" + caller.address


class PlanResolver:
    """Built once per app; `resolve` is called once per request."""

    def __init__(self, settings: Settings, experiments: Definitions) -> None:
        self._settings = settings
        self._experiments = experiments
        self._warned: set[str] = set()

    def resolve(self, headers: Mapping[str, str], subject: str) -> ResolvedPlan:
        """`headers` with lower-case names. 400 for a bad X-Twice-* header or an unknown experiment named."""
        # Parsed even when an arm replaces it: a bad header is refused whatever experiment runs.
        asked = parse_plan(headers, self._settings.plan)
        experiment = self._experiment(headers)
        if experiment is None:
            return ResolvedPlan(asked)
        if self._settings.experiments.allow_override and STRATEGY_HEADER.lower() in headers:
            return ResolvedPlan(asked)
        variant = assign(experiment.spec, subject)
        plan = with_required(
            variant.plan(self._settings.plan.max_rounds, trace=asked.trace), self._settings.plan
        )
        return ResolvedPlan(plan, Arm(experiment.name, variant.name, counted=not experiment.spec.paused))

    def _experiment(self, headers: Mapping[str, str]) -> Experiment | None:
        named = headers.get(EXPERIMENT_HEADER.lower())
        name = (named if named is not None else self._settings.experiments.default).strip()
        if not name:
            return None
        experiment = self._experiments.get(name)
        if experiment is not None:
            return experiment
        if named is not None:
            raise InvalidRequest(
                f"{EXPERIMENT_HEADER}: unknown experiment {name[:64]!r}.",
                param=EXPERIMENT_HEADER,
                code="unknown_experiment",
            )
        if name not in self._warned:
            self._warned.add(name)
            log.warning("default experiment %r is not defined; serving the default plan", name)
        return None
