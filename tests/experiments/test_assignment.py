"""The assignment rule and the definition format: pure functions, no Redis."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from app.errors import InvalidRequest
from app.experiments.spec import ExperimentSpec, assign, uniform
from app.settings import PlanSettings


def spec(*weights: float, paused: bool = False, name: str = "exp") -> ExperimentSpec:
    variants = [{"name": f"v{i}", "weight": w, "strategies": "none"} for i, w in enumerate(weights)]
    return ExperimentSpec.model_validate({"name": name, "variants": variants, "paused": paused})


@pytest.mark.parametrize("weights", [(50, 50), (10, 30, 60), (1, 1, 1, 1), (0.2, 0.8)])
def test_weights_are_honoured_within_two_points_over_10000_subjects(weights: tuple[float, ...]) -> None:
    experiment = spec(*weights)
    counts = Counter(assign(experiment, f"user-{i}").name for i in range(10_000))
    total = sum(weights)
    for index, weight in enumerate(weights):
        share = counts[f"v{index}"] / 10_000
        assert abs(share - weight / total) < 0.02, (weights, counts)


def test_assignment_is_sticky_and_depends_on_the_experiment_name() -> None:
    first = spec(50, 50, name="first")
    again = spec(50, 50, name="first")
    other = spec(50, 50, name="second")
    subjects = [f"s{i}" for i in range(500)]
    assert [assign(first, s).name for s in subjects] == [assign(again, s).name for s in subjects]
    # A different experiment reshuffles subjects independently (about half change side).
    moved = sum(assign(first, s).name != assign(other, s).name for s in subjects)
    assert 150 < moved < 350


def test_zero_weight_variants_get_nobody_and_changing_weights_moves_few() -> None:
    subjects = [f"s{i}" for i in range(2000)]
    assert {assign(spec(0, 1), s).name for s in subjects} == {"v1"}
    before = [assign(spec(50, 50), s).name for s in subjects]
    after = [assign(spec(60, 40), s).name for s in subjects]
    moved = sum(a != b for a, b in zip(before, after, strict=True))
    # Only subjects between the old and new boundary (10% of the line) move.
    assert 0.06 < moved / len(subjects) < 0.14
    assert all(b == "v1" and a == "v0" for a, b in zip(after, before, strict=True) if a != b)


def test_a_paused_experiment_serves_its_control() -> None:
    paused = spec(0, 1, paused=True)
    assert {assign(paused, f"s{i}").name for i in range(100)} == {"v0"}


def test_uniform_is_in_the_unit_interval() -> None:
    values = [uniform("e", str(i)) for i in range(1000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.45 < sum(values) / len(values) < 0.55


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([{"name": "a", "strategies": "psr,reflexion"}], "unknown strategy"),
        ([{"name": "a", "strategies": "psr,psr"}], "named twice"),
        ([{"name": "a", "rounds": "many"}], "rounds"),
        ([{"name": "a"}, {"name": "a"}], "named twice"),
        ([{"name": "a", "weight": 0}, {"name": "b", "weight": 0}], "weight above 0"),
        ([{"name": "Not A Label"}], "pattern"),
        ([], "at least 1"),
    ],
)
def test_bad_definitions_are_refused(variants: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ExperimentSpec.model_validate({"name": "exp", "variants": variants})


def test_rounds_above_the_servers_maximum_are_refused_naming_the_variant() -> None:
    experiment = ExperimentSpec.model_validate(
        {"name": "exp", "variants": [{"name": "deep", "strategies": "psr", "rounds": 12}]}
    )
    with pytest.raises(InvalidRequest, match="deep"):
        experiment.check_rounds(PlanSettings(max_rounds=8))
    experiment.check_rounds(PlanSettings(max_rounds=16))


def test_variant_plans_use_the_canonical_order() -> None:
    experiment = ExperimentSpec.model_validate(
        {"name": "exp", "variants": [{"name": "a", "strategies": "self_refine,psr", "rounds": "3"}]}
    )
    plan = experiment.control.plan(max_rounds=16)
    assert plan.strategies == ("psr", "self_refine")
    assert plan.rounds == 3
