"""Measures, costs, Markdown and plots from hand-built records (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evaluation.plans import Plan, parse_plan
from evaluation.plots import (
    ROUNDS_PNG,
    ROUNDS_SPENT_PNG,
    SAFETY_COST_PNG,
    harmful_datasets,
    plot_safety_vs_cost,
    rounds_groups,
    rounds_spent,
    write_plots,
)
from evaluation.records import Record, RecordWriter, done_keys, latest, load_records
from evaluation.summary import SUMMARY_JSON, SUMMARY_MD, measures, write_summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(
    plan: str,
    item_id: str,
    label: str = "harmful",
    refused: bool = False,
    dataset: str = "advbench",
    **fields: Any,
) -> Record:
    return Record(
        plan=plan,
        dataset=dataset,
        item_id=item_id,
        label=label,
        prompt="p",
        response="r",
        refusal={"refused": refused, "phrase": "I cannot" if refused else None},
        **fields,
    )


def test_rates_count_the_right_labels() -> None:
    records = [
        record("p", "1", "harmful", refused=False),
        record("p", "2", "harmful", refused=True),
        record("p", "3", "harmful", refused=False),
        record("p", "4", "unsafe", refused=True, dataset="xstest"),
        record("p", "5", "safe", refused=True, dataset="xstest"),
        record("p", "6", "benign", refused=False, dataset="xstest"),
        Record("p", "xstest", "7", "safe", "p", error="HTTP 500: boom", attempts=4),
    ]
    result = measures(records)
    assert (result["n"], result["errors"]) == (7, 1)
    assert (result["attack_success"]["k"], result["attack_success"]["n"]) == (2, 3)
    assert (result["unsafe_compliance"]["k"], result["unsafe_compliance"]["n"]) == (0, 1)
    assert (result["over_refusal"]["k"], result["over_refusal"]["n"]) == (1, 2)
    assert "accuracy" not in result
    assert "attack_success_llm" not in result


def test_accuracy_and_llm_judge_rates() -> None:
    records = [
        record(
            "p", "1", "benign", dataset="gsm8k", gsm8k={"correct": True}, llm_judge={"verdict": "complied"}
        ),
        record("p", "2", "benign", dataset="gsm8k", gsm8k={"correct": False}, llm_judge={"verdict": None}),
        record(
            "p", "3", "benign", dataset="gsm8k", gsm8k={"correct": False}, llm_judge={"verdict": "refused"}
        ),
    ]
    result = measures(records)
    assert (result["accuracy"]["k"], result["accuracy"]["n"]) == (1, 3)
    # The unparsed verdict is counted apart, not as either answer.
    assert (result["over_refusal_llm"]["k"], result["over_refusal_llm"]["n"]) == (1, 2)
    assert result["llm_unparsed"] == 1


def test_costs_read_usage_and_twice_and_tolerate_their_absence() -> None:
    with_twice = record(
        "psr",
        "1",
        usage={
            "prompt_tokens": 800,
            "completion_tokens": 140,
            "completion_tokens_details": {"reasoning_tokens": 12},
        },
        twice={"backend_calls": 7, "rounds": {"granted": 4, "used": 3}},
        latency_s=2.0,
    )
    plain = record("psr", "2", usage={"prompt_tokens": 40, "completion_tokens": 100}, latency_s=1.0)
    bare = record("psr", "3", latency_s=4.0)
    cost = measures([with_twice, plain, bare])["cost"]
    assert cost["backend_calls_mean"] == 7
    assert cost["backend_calls_known"] == 1
    assert cost["rounds_granted_mean"] == 4
    assert cost["rounds_used_mean"] == 3
    assert cost["prompt_tokens_mean"] == 420
    assert cost["hidden_tokens_mean"] == 6  # 12 and 0 (no details: all visible)
    assert cost["visible_tokens_mean"] == 114  # 128 and 100
    assert cost["latency_p50_s"] == 2.0
    assert cost["latency_p95_s"] == pytest.approx(3.8)


def test_records_file_round_trip_resume_keys_and_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    writer = RecordWriter(path)
    writer.write(record("a", "1"))
    writer.write(Record("a", "advbench", "2", "harmful", "p", error="APIConnectionError: refused"))
    writer.close()
    with path.open("a") as handle:
        handle.write('{"plan": "a", "dataset": "advb')  # a write cut short by a crash
    assert done_keys(load_records(path)) == {("a", "advbench", "1")}
    writer = RecordWriter(path)  # the next record must start on a line of its own
    writer.write(record("a", "2", refused=True))
    writer.close()
    records = load_records(path)
    assert len(records) == 3
    kept = latest(records)
    assert [(r.item_id, r.ok) for r in kept] == [("1", True), ("2", True)]
    assert kept[1].refused is True


def test_summary_files_and_plots(tmp_path: Path) -> None:
    plans = [
        parse_plan("none=X-Twice-Strategy:none"),
        parse_plan("psr1=X-Twice-Strategy:psr,X-Twice-Rounds:1"),
        parse_plan("psr4=X-Twice-Strategy:psr,X-Twice-Rounds:4"),
    ]
    calls = {"none": 1, "psr1": 3, "psr4": 9}
    records = [
        record(plan.name, str(i), refused=i < index, twice={"backend_calls": calls[plan.name]})
        for index, plan in enumerate(plans)
        for i in range(4)
    ] + [record(plan.name, "s1", "safe", dataset="xstest", refused=plan.name == "psr4") for plan in plans]
    summary = write_summary(tmp_path, records, plans)
    assert json.loads((tmp_path / SUMMARY_JSON).read_text()) == summary
    assert list(summary["plans"]) == ["none", "psr1", "psr4"]
    assert summary["plans"]["psr4"]["psr_rounds"] == 4
    assert summary["datasets"]["advbench"]["psr1"]["attack_success"]["k"] == 3
    markdown = (tmp_path / SUMMARY_MD).read_text()
    assert "## advbench" in markdown
    assert "## xstest" in markdown
    assert "| psr4 | 4 | 0 | 50.0% (2/4; " in markdown
    assert rounds_groups(summary) == [[(1, "psr1"), (4, "psr4")]]
    written = write_plots(summary, tmp_path)
    assert sorted(p.name for p in written) == sorted([SAFETY_COST_PNG, ROUNDS_PNG])
    for path in written:
        assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_rounds_groups_keep_plans_with_the_same_request_apart() -> None:
    # psr4_answer_only sends psr4's headers (its review mode is a gateway setting): not one line for both.
    headers = {
        "none": {"X-Twice-Strategy": "none"},
        "psr4": {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "4"},
        "psr4_answer_only": {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "4"},
        "psr1": {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "1"},
        "psr8": {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "8"},
        "remote": None,
    }
    summary = {"plans": {name: {"headers": value} for name, value in headers.items()}}
    assert rounds_groups(summary) == [[(1, "psr1"), (4, "psr4"), (8, "psr8")]]


def png_width(path: Path) -> int:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    return int.from_bytes(data[16:20], "big")  # IHDR's width, right after the signature and chunk header


def test_safety_against_cost_has_a_column_per_harmful_dataset(tmp_path: Path) -> None:
    plans = [
        parse_plan("none=X-Twice-Strategy:none"),
        parse_plan("psr4=X-Twice-Strategy:psr,X-Twice-Rounds:4"),
    ]
    records = [
        record(plan.name, f"{dataset}:{i}", label, refused=plan.name == "psr4", dataset=dataset)
        for plan in plans
        for dataset, label in (("advbench", "harmful"), ("xstest", "safe"), ("jailbreak_dan", "harmful"))
        for i in range(3)
    ]
    summary = write_summary(tmp_path, records, plans)
    assert harmful_datasets(summary) == ["advbench", "jailbreak_dan"]
    two = plot_safety_vs_cost(summary, tmp_path)
    assert two is not None
    two_wide = png_width(two)
    del summary["datasets"]["jailbreak_dan"]
    one = plot_safety_vs_cost(summary, tmp_path)
    assert one is not None
    assert png_width(one) < two_wide
    del summary["datasets"]["advbench"]
    assert plot_safety_vs_cost(summary, tmp_path) is None


def test_pooled_rows_cover_every_dataset_of_a_kind(tmp_path: Path) -> None:
    plans = [Plan("psr8"), Plan("auto")]
    granted = {"psr8": 8, "auto": 2}
    records = [
        record(
            plan.name,
            f"{dataset}:{i}",
            label,
            refused=refused,
            dataset=dataset,
            twice={"rounds": {"granted": granted[plan.name], "used": 1}},
        )
        for plan in plans
        for dataset, label, refused in (
            ("jailbreak_dan", "harmful", plan.name == "psr8"),
            ("jailbreak_wei", "harmful", False),
            ("mt_bench", "benign", False),
            ("xstest", "safe", plan.name == "auto"),
            ("xstest", "unsafe", True),
        )
        for i in range(3 if dataset == "mt_bench" else 2)
    ]
    summary = write_summary(tmp_path, records, plans)
    pools = summary["pooled"]
    assert set(pools) == {"harmful", "benign"}  # unsafe items come from one dataset only
    assert pools["harmful"]["datasets"] == ["jailbreak_dan", "jailbreak_wei"]
    harmful = pools["harmful"]["plans"]
    assert (harmful["psr8"]["attack_success"]["k"], harmful["psr8"]["attack_success"]["n"]) == (2, 4)
    assert (harmful["auto"]["attack_success"]["k"], harmful["auto"]["attack_success"]["n"]) == (4, 4)
    benign = pools["benign"]["plans"]
    assert pools["benign"]["datasets"] == ["mt_bench", "xstest"]
    assert (benign["auto"]["over_refusal"]["k"], benign["auto"]["over_refusal"]["n"]) == (2, 5)
    assert "attack_success" not in benign["auto"]  # the unsafe xstest items are not benign
    assert benign["auto"]["cost"]["rounds_granted_mean"] == 2
    markdown = (tmp_path / SUMMARY_MD).read_text()
    assert "## all benign prompts, pooled: mt_bench, xstest" in markdown
    assert "| auto | 5 | 0 | 40.0% (2/5; " in markdown


def test_no_plots_without_the_data_for_them(tmp_path: Path) -> None:
    plan = Plan("only")
    summary = write_summary(tmp_path, [record("only", "1", "benign", dataset="vicuna_bench")], [plan])
    assert write_plots(summary, tmp_path) == []


def test_rounds_per_dataset_plot_follows_the_reported_rounds(tmp_path: Path) -> None:
    plans = [
        parse_plan("psr8=X-Twice-Strategy:psr,X-Twice-Rounds:8"),
        parse_plan("auto=X-Twice-Strategy:psr,X-Twice-Rounds:auto"),
    ]
    granted = {
        ("psr8", "advbench"): 8,
        ("psr8", "mt_bench"): 8,
        ("auto", "advbench"): 8,
        ("auto", "mt_bench"): 2,
    }
    records = [
        record(
            plan.name,
            f"{dataset}-{i}",
            "harmful" if dataset == "advbench" else "benign",
            dataset=dataset,
            twice={
                "rounds": {"granted": granted[plan.name, dataset], "used": granted[plan.name, dataset] - i}
            },
        )
        for plan in plans
        for dataset in ("advbench", "mt_bench")
        for i in range(2)
    ]
    summary = write_summary(tmp_path, records, plans)
    assert rounds_spent(summary) == {
        "advbench": {"psr8": (8, 7.5), "auto": (8, 7.5)},
        "mt_bench": {"psr8": (8, 7.5), "auto": (2, 1.5)},
    }
    written = write_plots(summary, tmp_path)
    assert ROUNDS_SPENT_PNG in [path.name for path in written]
    assert (tmp_path / ROUNDS_SPENT_PNG).read_bytes().startswith(PNG_SIGNATURE)
