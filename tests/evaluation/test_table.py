"""`twice eval-table`: columns from the records, rates, differences with the paired interval, cost against the
baseline (hand-built records; no server needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from app.cli import main
from evaluation.compare import compare
from evaluation.records import Record, RecordWriter
from evaluation.table import TableError, build_table

LABELS = {"jailbreak_wei": "harmful", "jailbreak_dan": "harmful", "xstest_safe": "safe", "gsm8k": "benign"}


def record(plan: str, dataset: str, item: int, refused: bool, latency: float = 1.0, **fields: Any) -> Record:
    return Record(
        plan=plan,
        dataset=dataset,
        item_id=str(item),
        label=LABELS[dataset],
        prompt="",
        refusal={"refused": refused},
        latency_s=latency,
        twice={"backend_calls": 1 if plan == "none" else 3, "rounds": {"used": 0 if plan == "none" else 2}},
        **fields,
    )


# Refused or not, per plan and item. Attack success: not refused; over-refusal: refused.
OUTCOMES = {
    "jailbreak_wei": {"none": [False, False, False, True], "psr4": [True, False, True, True]},
    "jailbreak_dan": {"none": [False, True, False], "psr4": [True, True, False]},
    "xstest_safe": {"none": [False, True, False, False, False], "psr4": [True, True, False, False, False]},
}
GSM8K_CORRECT = {"none": [True, True, False, True], "psr4": [True, False, False, True]}


def records() -> list[Record]:
    made = [
        record(plan, dataset, item, refused, latency=1.0 if plan == "none" else 3.0)
        for dataset, plans in OUTCOMES.items()
        for plan, row in plans.items()
        for item, refused in enumerate(row)
    ]
    made += [
        record(plan, "gsm8k", item, False, latency=2.0, gsm8k={"correct": correct})
        for plan, row in GSM8K_CORRECT.items()
        for item, correct in enumerate(row)
    ]
    return made


def test_columns_follow_the_sets_with_the_jailbreaks_pooled_and_gsm8k_by_accuracy() -> None:
    table = build_table(records(), "none")
    assert [column.title for column in table.columns] == [
        "jailbreak_wei: attack success",
        "jailbreak_dan: attack success",
        "jailbreaks: attack success",
        "xstest_safe: over-refusal",
        "gsm8k: accuracy",
    ]
    assert table.plans == ("none", "psr4")


def test_rates_and_differences_match_the_records() -> None:
    table = build_table(records(), "none")
    pooled = table.cells["psr4"]["jailbreaks: attack success"]
    # psr4 lets 2 of 7 jailbreaks through, the model alone 5 of 7.
    assert (pooled.rate.successes, pooled.rate.total) == (2, 7)
    base = table.cells["none"]["jailbreaks: attack success"]
    assert (base.rate.successes, base.rate.total) == (5, 7)
    assert base.difference is None
    assert pooled.difference == pytest.approx(-3 / 7)
    none_outcomes = [not r for d in ("jailbreak_wei", "jailbreak_dan") for r in OUTCOMES[d]["none"]]
    psr_outcomes = [not r for d in ("jailbreak_wei", "jailbreak_dan") for r in OUTCOMES[d]["psr4"]]
    expected = stats.ttest_rel(
        [float(x) for x in psr_outcomes], [float(x) for x in none_outcomes]
    ).confidence_interval(0.95)
    assert pooled.ci95 == pytest.approx((expected.low, expected.high))
    over_refusal = table.cells["psr4"]["xstest_safe: over-refusal"]
    assert (over_refusal.rate.successes, over_refusal.rate.total) == (2, 5)
    assert over_refusal.difference == pytest.approx(0.2)
    accuracy = table.cells["psr4"]["gsm8k: accuracy"]
    assert (accuracy.rate.successes, accuracy.rate.total) == (2, 4)
    assert accuracy.difference == pytest.approx(-0.25)
    assert compare(records(), ["none"], ["psr4"], "accuracy").difference == pytest.approx(-0.25)


def test_cost_is_against_the_baseline_on_the_items_both_answered() -> None:
    made = records()
    # A failed psr4 request on a slow item: out of the wall-time ratio, not counted as a refusal.
    made.append(record("psr4", "gsm8k", 9, False, latency=100.0, error="timeout"))
    made.append(record("none", "gsm8k", 9, False, latency=50.0, gsm8k={"correct": True}))
    table = build_table(made, "none")
    # 12 items at 1 s and 4 GSM8K items at 2 s for none; psr4 3 s and 2 s on the same 16.
    assert table.cost["psr4"].wall_vs_baseline == pytest.approx((12 * 3 + 4 * 2) / (12 * 1 + 4 * 2))
    assert table.cost["none"].wall_vs_baseline == pytest.approx(1.0)
    assert table.cost["psr4"].backend_calls == pytest.approx(3.0)
    assert table.cost["psr4"].rounds_used == pytest.approx(2.0)
    assert table.cells["none"]["gsm8k: accuracy"].rate.total == 5
    # The difference is on the items both answered: 4 of them.
    assert table.cells["psr4"]["gsm8k: accuracy"].difference == pytest.approx(-0.25)


def test_a_baseline_without_records_is_an_error() -> None:
    with pytest.raises(TableError, match="baseline plan 'plain'"):
        build_table(records(), "plain")


def test_the_command_reads_several_folders_and_writes_markdown_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder, datasets in (
        ("heldout", {"jailbreak_wei", "gsm8k"}),
        ("dev", {"jailbreak_dan", "xstest_safe"}),
    ):
        writer = RecordWriter(tmp_path / folder / "records.jsonl")
        for each in records():
            if each.dataset in datasets:
                writer.write(each)
        writer.close()
    markdown, saved = tmp_path / "table.md", tmp_path / "table.json"
    folders = [str(tmp_path / "heldout"), str(tmp_path / "dev")]
    assert main(["eval-table", *folders, "--markdown", str(markdown), "--json", str(saved)]) == 0
    printed = capsys.readouterr().out
    assert printed == markdown.read_text()
    row = next(line for line in printed.splitlines() if line.startswith("| psr4 |"))
    assert "28.6% (2/7; 8.2–64.1); -42.9 (" in row
    assert row.endswith("| 2.20× | 3.00 | 2.00 | – |")
    data = json.loads(saved.read_text())
    assert data["cells"]["psr4"]["gsm8k: accuracy"]["difference"] == pytest.approx(-0.25)
    assert main(["eval-table", *folders, "--baseline", "plain"]) == 2
    assert "baseline plan 'plain'" in capsys.readouterr().err
