from __future__ import annotations

import dataclasses
import logging

import pytest

from app.auth import Caller
from app.errors import InvalidRequest
from app.experiments.results import Attribution
from app.experiments.spec import Experiment, ExperimentSpec, VariantSpec
from app.plan_resolver import Arm, PlanResolver, ResolvedPlan, subject_of
from app.settings import ExperimentSettings, PlanSettings, Settings

# One variant, so every subject lands in it: the tests read the arm, not the hash.
ALL_PSR = ExperimentSpec(name="all-psr", variants=[VariantSpec(name="psr2", strategies="psr", rounds=2)])
ALL_NONE = ExperimentSpec(name="all-none", variants=[VariantSpec(name="plain", strategies="none", rounds=0)])


class Definitions:
    def __init__(self, *specs: ExperimentSpec) -> None:
        self._experiments = {spec.name: Experiment(spec, 1) for spec in specs}

    def get(self, name: str) -> Experiment | None:
        return self._experiments.get(name)


def resolver(*specs: ExperimentSpec, plan: PlanSettings | None = None, **experiments: object) -> PlanResolver:
    settings = Settings(
        plan=plan or PlanSettings(),
        experiments=ExperimentSettings.model_validate(experiments),
    )
    return PlanResolver(settings, Definitions(*specs))


def test_without_an_experiment_the_headers_decide() -> None:
    resolved = resolver(ALL_PSR).resolve({"x-twice-strategy": "self_refine", "x-twice-rounds": "3"}, "s")
    assert resolved.plan.strategies == ("self_refine",)
    assert resolved.plan.rounds == 3
    assert resolved.plan.client_rounds
    assert resolved.arm is None
    assert resolved.variant == "none"
    assert resolved.attribution is None
    assert resolved.extension() == {}
    assert resolved.headers() == {}


def test_the_experiment_arm_replaces_the_header_plan() -> None:
    headers = {"x-twice-experiment": "all-psr", "x-twice-strategy": "self_refine", "x-twice-trace": "1"}
    resolved = resolver(ALL_PSR).resolve(headers, "s")
    assert resolved.plan.strategies == ("psr",)
    assert resolved.plan.rounds == 2
    assert not resolved.plan.client_rounds  # the arm's number is the server's: honoured as it is
    assert resolved.plan.trace  # the client's trace survives the arm
    assert resolved.arm == Arm("all-psr", "psr2", counted=True)
    assert resolved.attribution == Attribution("all-psr", "psr2")
    assert resolved.extension() == {"experiment": "all-psr", "variant": "psr2"}
    assert resolved.headers() == {"X-Twice-Variant": "psr2"}


def test_the_default_experiment_applies_without_the_header() -> None:
    resolved = resolver(ALL_PSR, default="all-psr").resolve({}, "s")
    assert resolved.arm == Arm("all-psr", "psr2", counted=True)
    assert resolved.plan.strategies == ("psr",)


def test_allow_override_lets_an_explicit_strategy_leave_the_experiment() -> None:
    headers = {"x-twice-experiment": "all-psr", "x-twice-strategy": "self_refine"}
    resolved = resolver(ALL_PSR, allow_override=True).resolve(headers, "s")
    assert resolved.arm is None
    assert resolved.plan.strategies == ("self_refine",)
    # Without an explicit strategy the experiment still applies.
    assert resolver(ALL_PSR, allow_override=True).resolve({"x-twice-experiment": "all-psr"}, "s").arm


@pytest.mark.parametrize("headers", [{}, {"x-twice-strategy": "none"}, {"x-twice-strategy": "role_play"}])
def test_a_client_cannot_remove_the_required_plan(headers: dict[str, str]) -> None:
    resolved = resolver(plan=PlanSettings(required="psr")).resolve(headers, "s")
    assert "psr" in resolved.plan.strategies
    assert resolved.plan.required == ("psr",)


def test_an_arm_cannot_remove_the_required_plan() -> None:
    resolved = resolver(ALL_NONE, plan=PlanSettings(required="psr")).resolve(
        {"x-twice-experiment": "all-none"}, "s"
    )
    assert resolved.arm == Arm("all-none", "plain", counted=True)
    assert resolved.plan.strategies == ("psr",)
    assert resolved.plan.required == ("psr",)


def test_an_unknown_experiment_named_by_the_client_is_refused() -> None:
    with pytest.raises(InvalidRequest) as raised:
        resolver(ALL_PSR).resolve({"x-twice-experiment": "nope"}, "s")
    assert raised.value.status_code == 400
    assert raised.value.code == "unknown_experiment"
    assert raised.value.param == "X-Twice-Experiment"


def test_an_unknown_default_experiment_serves_the_default_plan_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plans = resolver(default="gone")
    with caplog.at_level(logging.WARNING, logger="twice.plan"):
        first = plans.resolve({}, "s")
        plans.resolve({}, "t")
    assert first == ResolvedPlan(first.plan)
    assert first.plan.strategies == ()
    assert sum("gone" in record.message for record in caplog.records) == 1


def test_a_bad_header_is_refused_even_when_an_arm_replaces_it() -> None:
    with pytest.raises(InvalidRequest) as raised:
        resolver(ALL_PSR).resolve({"x-twice-experiment": "all-psr", "x-twice-rounds": "many"}, "s")
    assert raised.value.param == "X-Twice-Rounds"


def test_a_paused_experiment_serves_its_control_and_counts_nothing() -> None:
    paused = ExperimentSpec(
        name="paused",
        paused=True,
        variants=[
            VariantSpec(name="control", strategies="none"),
            VariantSpec(name="treat", strategies="psr"),
        ],
    )
    for subject in ("a", "b", "c", "d"):
        resolved = resolver(paused).resolve({"x-twice-experiment": "paused"}, subject)
        assert resolved.arm == Arm("paused", "control", counted=False)
        assert resolved.attribution is None
        assert resolved.variant == "control"


def test_the_resolved_plan_is_frozen() -> None:
    resolved = resolver(ALL_PSR).resolve({"x-twice-experiment": "all-psr"}, "s")
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.plan = resolved.plan  # type: ignore[misc]


def test_the_subject_is_the_user_then_the_header_then_the_key_then_the_address() -> None:
    keyed = Caller(key_id="key-1", tenant="t", address="10.0.0.1")
    anonymous = Caller(key_id=None, tenant="t", address="10.0.0.1")
    header = {"x-twice-subject": "from-header"}
    assert subject_of("alice", header, keyed) == "alice"
    assert subject_of("", header, keyed) == "from-header"
    assert subject_of(42, {}, keyed) == "key:key-1"
    assert subject_of(None, {}, anonymous) == "addr:10.0.0.1"
