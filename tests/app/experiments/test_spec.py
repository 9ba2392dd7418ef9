"""The experiment definition format and assignment rule (app/experiments/spec.py), beyond what
tests/experiments/test_assignment.py pins (weights honoured, stickiness, few moves on a weight change,
paused, the main refusals): the format's strictness, name rules, bounds, and the assignment's edges."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.experiments import spec as spec_module
from app.experiments.spec import MAX_VARIANTS, Experiment, ExperimentSpec, VariantSpec, assign, uniform


def experiment(*variants: dict[str, Any], **fields: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate({"name": "exp", "variants": list(variants), **fields})


def test_the_subject_and_experiment_name_cannot_run_into_each_other() -> None:
    """Hashing `experiment NUL subject`: ("ab", "c") and ("a", "bc") are different points."""
    assert uniform("ab", "c") != uniform("a", "bc")
    assert uniform("exp", "s") == uniform("exp", "s")


def test_a_misspelt_field_is_refused_rather_than_ignored() -> None:
    with pytest.raises(ValidationError, match="wieght"):
        experiment({"name": "a", "wieght": 0})
    with pytest.raises(ValidationError, match="variant"):
        ExperimentSpec.model_validate({"name": "exp", "variant": [{"name": "a"}]})


@pytest.mark.parametrize("name", ["exp.v2", "a", "0-start", "x" * 64, "with_under-dash"])
def test_experiment_names_that_are_accepted(name: str) -> None:
    assert ExperimentSpec.model_validate({"name": name, "variants": [{"name": "a"}]}).name == name


@pytest.mark.parametrize("name", ["Exp", "-start", ".start", "x" * 65, "with space", "", "é"])
def test_experiment_names_that_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        ExperimentSpec.model_validate({"name": name, "variants": [{"name": "a"}]})


@pytest.mark.parametrize("name", ["v.1", "x" * 33, "A", "_a"])
def test_variant_names_are_a_narrower_label_set(name: str) -> None:
    """Variant names become the `variant` metric label: no dots, at most 32 characters."""
    with pytest.raises(ValidationError):
        experiment({"name": name})


def test_at_most_max_variants_variants() -> None:
    experiment(*({"name": f"v{i}"} for i in range(MAX_VARIANTS)))
    with pytest.raises(ValidationError):
        experiment(*({"name": f"v{i}"} for i in range(MAX_VARIANTS + 1)))


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ({"name": "a", "weight": -1}, "greater than or equal"),
        ({"name": "a", "weight": 1_000_001}, "less than or equal"),
        ({"name": "a", "rounds": 65}, "less than or equal"),
        ({"name": "a", "rounds": -1}, "greater than or equal"),
        ({"name": "a", "strategies": ""}, "at least 1"),
    ],
)
def test_weights_rounds_and_strategies_have_bounds(variant: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        experiment(variant)


def test_strategies_and_rounds_are_stored_in_canonical_form() -> None:
    variant = VariantSpec.model_validate({"name": "a", "strategies": " Self_Refine , PSR ", "rounds": 3})
    assert variant.strategies == "psr,self_refine"
    assert VariantSpec.model_validate({"name": "a", "strategies": "NONE"}).strategies == "none"
    assert VariantSpec.model_validate({"name": "a"}).rounds == "auto"


def test_a_variants_plan_carries_the_trace_flag_and_its_rounds() -> None:
    variant = VariantSpec.model_validate({"name": "a", "strategies": "psr", "rounds": "auto"})
    plan = variant.plan(max_rounds=8, trace=True)
    assert (plan.strategies, plan.rounds, plan.trace) == (("psr",), "auto", True)
    assert VariantSpec.model_validate({"name": "b"}).plan(8).strategies == ()


def test_an_experiment_writes_its_version_beside_a_definition_it_can_be_read_back_from() -> None:
    spec = experiment({"name": "a", "weight": 2, "strategies": "psr", "rounds": 2}, {"name": "b"})
    written = Experiment(spec, version=7).to_dict()
    assert written["version"] == 7
    assert written["name"] == "exp"
    assert ExperimentSpec.model_validate({k: v for k, v in written.items() if k != "version"}) == spec


def test_a_paused_experiment_serves_its_control_even_with_no_weight() -> None:
    paused = experiment({"name": "control", "weight": 0}, {"name": "b", "weight": 1}, paused=True)
    assert {assign(paused, f"s{i}").name for i in range(50)} == {"control"}


def test_zero_weight_variants_in_the_middle_or_at_the_end_get_nobody() -> None:
    spec = experiment(
        {"name": "a"}, {"name": "off", "weight": 0}, {"name": "c"}, {"name": "end", "weight": 0}
    )
    assert {assign(spec, f"s{i}").name for i in range(2000)} == {"a", "c"}


def test_a_point_at_the_very_end_of_the_line_goes_to_the_last_variant_with_weight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Float rounding can put the point on the last boundary; it cannot be produced from a hash on demand,
    so `uniform` is replaced (the one fake) by the point 1.0 that rounding gives."""
    monkeypatch.setattr(spec_module, "uniform", lambda experiment, subject: 1.0)
    spec = experiment({"name": "a", "weight": 1}, {"name": "b", "weight": 1}, {"name": "end", "weight": 0})
    assert assign(spec, "anyone").name == "b"
