"""`twice eval-compare`: group means, the paired interval over items, and what is left out (hand-built
records; no server needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from app.cli import main
from evaluation.compare import CompareError, compare
from evaluation.records import Record, RecordWriter


def record(plan: str, item: str, refused: bool, label: str = "harmful", **fields: Any) -> Record:
    return Record(
        plan=plan,
        dataset="jb" if label == "harmful" else "xs",
        item_id=item,
        label=label,
        prompt="",
        refusal={"refused": refused},
        **fields,
    )


# Refused (True) or not per item, per run. Attack success = not refused.
RUNS = {
    "fixed": [True, True, False, False, True],
    "fixed_again": [True, False, False, False, True],
    "auto": [True, False, False, True, False],
}


def runs(table: dict[str, list[bool]]) -> list[Record]:
    return [record(plan, str(i), refused) for plan, row in table.items() for i, refused in enumerate(row)]


def test_group_means_and_the_paired_difference() -> None:
    result = compare(runs(RUNS), ["fixed", "fixed_again"], ["auto"], "attack_success")
    assert result.items == 5
    assert result.left_out == 0
    assert [(plan, r.successes, r.total) for plan, r in result.baseline.items()] == [
        ("fixed", 2, 5),
        ("fixed_again", 3, 5),
    ]
    assert [(plan, r.successes, r.total) for plan, r in result.candidate.items()] == [("auto", 3, 5)]
    # Per item, attack success: baseline means 0, .5, 1, 1, 0; candidate 0, 1, 1, 0, 1.
    assert result.baseline_mean == pytest.approx(0.5)
    assert result.candidate_mean == pytest.approx(0.6)
    assert result.difference == pytest.approx(0.1)
    differences = [0, 0.5, 0, -1, 1]
    half = stats.t.ppf(0.975, 4) * stats.tstd(differences) / math.sqrt(5)
    assert result.ci95 == pytest.approx((0.1 - half, 0.1 + half))
    assert result.disagreements == {"fixed|fixed_again": 1, "fixed|auto": 3, "fixed_again|auto": 2}
    assert result.disagreement_within == 1
    assert result.disagreement_between == pytest.approx(2.5)


def test_no_spread_between_items_gives_a_point_interval() -> None:
    same = {"a": [True, False, True], "b": [True, False, True]}
    result = compare(runs(same), ["a"], ["b"], "attack_success")
    assert result.difference == 0
    assert result.ci95 == (0.0, 0.0)
    assert result.disagreements == {"a|b": 0}
    assert result.disagreement_within is None


def test_items_missing_under_a_plan_or_failed_are_left_out() -> None:
    records = runs(RUNS)
    records = [r for r in records if not (r.plan == "auto" and r.item_id == "4")]
    records.append(record("fixed", "9", True))  # under one plan only
    records.append(record("auto", "9", False, error="timeout"))  # failed: not an outcome
    result = compare(records, ["fixed"], ["auto"], "attack_success")
    assert result.items == 4
    assert result.left_out == 2
    assert [r.total for r in (*result.baseline.values(), *result.candidate.values())] == [4, 4]


def test_the_last_record_of_an_item_counts() -> None:
    records = [*runs({"a": [True], "b": [True]}), record("b", "0", False)]  # b's item redone, not refused
    assert compare(records, ["a"], ["b"], "attack_success").difference == pytest.approx(1.0)


def test_the_measure_chooses_labels_and_direction() -> None:
    records = [
        *runs({"a": [True, True], "b": [True, True]}),
        record("a", "s1", True, label="safe"),
        record("b", "s1", False, label="safe"),
    ]
    refusals = compare(records, ["a"], ["b"], "over_refusal")
    assert refusals.items == 1
    assert refusals.difference == pytest.approx(-1.0)
    assert compare(records, ["a"], ["b"], "attack_success").items == 2


@pytest.mark.parametrize(
    ("baseline", "candidate", "measure", "message"),
    [
        (["fixed"], ["nope"], "attack_success", "no attack_success record for plan 'nope'"),
        (["fixed"], ["fixed"], "attack_success", "named twice"),
        (["fixed"], [], "attack_success", "at least one plan"),
        (["fixed"], ["auto"], "speed", "unknown measure"),
        (["fixed"], ["auto"], "accuracy", "no accuracy record for plan 'fixed'"),
    ],
)
def test_what_cannot_be_compared_is_an_error(
    baseline: list[str], candidate: list[str], measure: str, message: str
) -> None:
    with pytest.raises(CompareError, match=message):
        compare(runs(RUNS), baseline, candidate, measure)


def test_the_command_prints_and_writes_the_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    writer = RecordWriter(tmp_path / "records.jsonl")
    for item in runs(RUNS):
        writer.write(item)
    writer.close()
    out = tmp_path / "compare.json"
    args = ["eval-compare", str(tmp_path), "--baseline", "fixed,fixed_again", "--candidate", "auto"]
    plot = tmp_path / "compare.png"
    assert main([*args, "--json", str(out), "--plot", str(plot)]) == 0
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    printed = capsys.readouterr().out
    assert "attack_success on 5 items" in printed
    assert "difference (candidate - baseline): +10.0 points" in printed
    assert "mean: 1.0 between two runs of one setting, 2.5 between the settings" in printed
    saved = json.loads(out.read_text())
    assert saved["difference"] == pytest.approx(0.1)
    assert saved["candidate"][0]["rate"] == pytest.approx(0.6)
    assert main([*args, "--dataset", "other"]) == 2
    assert "no attack_success record" in capsys.readouterr().err
    assert main([*args, "--json", str(tmp_path / "missing" / "compare.json")]) == 2
    assert "No such file or directory" in capsys.readouterr().err


def test_the_parts_of_a_set_run_apart_are_compared_as_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Items 0-2 in one folder (say, the dev part), 3-4 in another: together, the five items of RUNS.
    for folder, items in (("dev", range(3)), ("heldout", range(3, 5))):
        writer = RecordWriter(tmp_path / folder / "records.jsonl")
        for each in runs(RUNS):
            if int(each.item_id) in items:
                writer.write(each)
        writer.close()
    args = ["eval-compare", "--baseline", "fixed,fixed_again", "--candidate", "auto"]
    assert main([*args[:1], str(tmp_path / "dev"), str(tmp_path / "heldout"), *args[1:]]) == 0
    printed = capsys.readouterr().out
    assert "attack_success on 5 items" in printed
    assert "difference (candidate - baseline): +10.0 points" in printed
    assert main([*args[:1], str(tmp_path / "dev"), *args[1:]]) == 0
    assert "attack_success on 3 items" in capsys.readouterr().out
