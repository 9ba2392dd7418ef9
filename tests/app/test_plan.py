from __future__ import annotations

import pytest

from app.errors import InvalidRequest
from app.plan import parse_plan
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
