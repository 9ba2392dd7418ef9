"""Plans from `--plan` and `--plans FILE.json`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.plans import Plan, PlanError, load_plans_file, parse_plan, unique


def test_parse_plan_keeps_comma_lists_of_strategies() -> None:
    plan = parse_plan("mix=X-Twice-Strategy:psr,self_refine,X-Twice-Rounds:2")
    assert plan.headers == (("X-Twice-Strategy", "psr,self_refine"), ("X-Twice-Rounds", "2"))
    assert plan.psr_rounds == 2
    assert parse_plan("default=") == Plan("default", ())
    assert parse_plan("none=X-Twice-Strategy:none").psr_rounds is None
    assert parse_plan("auto=X-Twice-Strategy:psr,X-Twice-Rounds:auto").psr_rounds is None


@pytest.mark.parametrize(
    "text",
    ["noequals", "=X-A:1", "p=justtext", "p=X-A:1,X-A:2", "p=Bad Header:1", "bad name=X-A:1"],
)
def test_parse_plan_rejects(text: str) -> None:
    with pytest.raises(PlanError):
        parse_plan(text)


def test_plans_differing_only_by_rounds_compare_equal_without_them() -> None:
    a = parse_plan("psr1=X-Twice-Strategy:psr,X-Twice-Rounds:1")
    b = parse_plan("psr4=x-twice-rounds:4,x-twice-strategy:psr")
    c = parse_plan("psr4sr=X-Twice-Strategy:psr,self_refine,X-Twice-Rounds:4")
    assert a.without_rounds() == b.without_rounds() != c.without_rounds()
    assert (a.psr_rounds, b.psr_rounds) == (1, 4)


def test_plans_file_object_and_list_forms(tmp_path: Path) -> None:
    as_object = tmp_path / "object.json"
    as_object.write_text(json.dumps({"none": {"X-Twice-Strategy": "none"}, "default": {}}))
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps([{"name": "psr2", "headers": {"X-Twice-Rounds": 2}}]))
    assert load_plans_file(as_object) == [Plan("none", (("X-Twice-Strategy", "none"),)), Plan("default")]
    assert load_plans_file(as_list) == [Plan("psr2", (("X-Twice-Rounds", "2"),))]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"p": ["X-A"]}))
    with pytest.raises(PlanError):
        load_plans_file(bad)


def test_duplicate_plan_names_are_refused() -> None:
    with pytest.raises(PlanError, match="twice"):
        unique([Plan("a"), Plan("b"), Plan("a", (("X-A", "1"),))])
