from __future__ import annotations

import pytest

from app.errors import InvalidRequest
from app.plan import Plan, parse_plan, with_required
from app.settings import PlanSettings

DEFAULTS = PlanSettings()


def test_no_headers_gives_the_server_default() -> None:
    plan = parse_plan({}, PlanSettings(strategies="psr", rounds="3"))
    assert plan.strategies == ("psr",)
    assert plan.rounds == 3
    assert not plan.trace
    assert not plan.client_rounds  # the server's number: honoured as it is (app/rounds.py)
    assert parse_plan({"x-twice-rounds": "3"}, DEFAULTS).client_rounds


def test_header_order_does_not_change_the_pipeline() -> None:
    a = parse_plan({"x-twice-strategy": "self_refine, psr,role_play"}, DEFAULTS)
    b = parse_plan({"x-twice-strategy": "role_play,psr,self_refine"}, DEFAULTS)
    assert a.strategies == b.strategies == ("role_play", "psr", "self_refine")
    assert a.applied == "role_play,psr,self_refine"


def test_none_and_auto_and_trace() -> None:
    plan = parse_plan({"x-twice-strategy": "NONE", "x-twice-rounds": "auto", "x-twice-trace": "1"}, DEFAULTS)
    assert plan.strategies == ()
    assert plan.applied == "none"
    assert plan.rounds == "auto"
    assert plan.trace


@pytest.mark.parametrize(
    ("headers", "param"),
    [
        ({"x-twice-strategy": "psr,telepathy"}, "X-Twice-Strategy"),
        ({"x-twice-strategy": "psr,psr"}, "X-Twice-Strategy"),
        ({"x-twice-strategy": "none,psr"}, "X-Twice-Strategy"),
        ({"x-twice-strategy": "psr,"}, "X-Twice-Strategy"),
        ({"x-twice-strategy": ""}, "X-Twice-Strategy"),
        ({"x-twice-rounds": "-1"}, "X-Twice-Rounds"),
        ({"x-twice-rounds": "17"}, "X-Twice-Rounds"),
        ({"x-twice-rounds": "many"}, "X-Twice-Rounds"),
        ({"x-twice-rounds": "99999999999"}, "X-Twice-Rounds"),
        ({"x-twice-trace": "maybe"}, "X-Twice-Trace"),
    ],
)
def test_bad_headers_name_the_header(headers: dict[str, str], param: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_plan(headers, DEFAULTS)
    assert raised.value.param == param
    assert raised.value.status_code == 400


REQUIRE_PSR = PlanSettings(required="psr")


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-twice-strategy": "none"}, {"x-twice-strategy": "role_play"}, {"x-twice-strategy": "psr"}],
)
def test_a_client_cannot_remove_a_required_strategy(headers: dict[str, str]) -> None:
    plan = parse_plan(headers, REQUIRE_PSR)
    assert "psr" in plan.strategies
    assert plan.required == ("psr",)
    asked = headers.get("x-twice-strategy", "none")
    assert set(plan.strategies) == {"psr"} | ({asked} - {"none"})


def test_a_client_adds_to_the_required_plan_in_canonical_order() -> None:
    plan = parse_plan({"x-twice-strategy": "self_refine,role_play"}, REQUIRE_PSR)
    assert plan.strategies == ("role_play", "psr", "self_refine")


def test_an_experiment_arm_cannot_remove_a_required_strategy() -> None:
    arm = Plan(strategies=(), rounds=0)
    plan = with_required(arm, REQUIRE_PSR)
    assert plan.strategies == ("psr",)
    assert with_required(arm, DEFAULTS) is arm


def test_a_bad_required_plan_names_its_setting() -> None:
    with pytest.raises(InvalidRequest, match="TWICE_PLAN__REQUIRED: unknown strategy 'pssr'"):
        parse_plan({}, PlanSettings(required="pssr"))
