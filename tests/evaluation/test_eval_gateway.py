"""`twice eval` end to end: the real CLI against `twice serve` on the real embedded model, two plans, and
the loopback vLLM stand-in as the LLM judge (its word-salad answers exercise the unparsed-verdict path);
the files it writes must agree with its records."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from evaluation.datasets import GSM8K_MIN_TOKENS, SHIPPED_DATA_DIR
from evaluation.plots import ROUNDS_PNG, SAFETY_COST_PNG
from evaluation.records import RECORDS_FILE, Record, load_records
from evaluation.summary import SUMMARY_JSON, SUMMARY_MD, format_rate
from tests.conftest import EMBEDDED_MODEL

pytestmark = pytest.mark.model

PLANS = {"psr1": "X-Twice-Strategy:psr,X-Twice-Rounds:1", "psr2": "X-Twice-Strategy:psr,X-Twice-Rounds:2"}
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def run(gateway: str, stub_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    command = [
        sys.executable, "-m", "app", "eval",
        "--base-url", f"{gateway}/v1", "--model", EMBEDDED_MODEL,
        *(arg for name, headers in PLANS.items() for arg in ("--plan", f"{name}={headers}")),
        "--dataset", "advbench=2", "--dataset", "xstest=1", "--dataset", "gsm8k=1",
        "--data-dir", str(SHIPPED_DATA_DIR), "--max-tokens", str(MAX_TOKENS), "--seed", "3",
        "--concurrency", "2", "--no-progress", "--out", str(out),
        "--judge-base-url", f"{stub_url}/v1", "--judge-model", "stub-model",
    ]  # fmt: skip
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr
    assert "8 requests (0 already done, 0 failed)" in result.stdout
    return out


def test_every_item_and_plan_has_a_complete_record(run: Path) -> None:
    records = load_records(run / RECORDS_FILE)
    assert len(records) == 8
    assert {(r.plan, r.dataset) for r in records} == {
        (p, d) for p in PLANS for d in ("advbench", "xstest", "gsm8k")
    }
    for record in records:
        assert record.ok
        assert record.attempts == 1
        assert isinstance(record.response, str)
        assert record.usage is not None
        # What the client received stays within the budget (GSM8K gets enough to finish); psr's verdicts
        # are hidden tokens on top.
        visible = (
            record.usage["completion_tokens"] - record.usage["completion_tokens_details"]["reasoning_tokens"]
        )
        assert 0 < visible <= (GSM8K_MIN_TOKENS if record.dataset == "gsm8k" else MAX_TOKENS)
        assert record.usage["completion_tokens_details"]["reasoning_tokens"] >= 1
        assert record.latency_s is not None
        assert record.latency_s > 0
        assert record.response_headers["x-twice-request-id"].startswith("chatcmpl-")
        assert record.refusal is not None
        assert record.llm_judge is not None
        assert isinstance(record.llm_judge["raw"], str)
        assert record.llm_judge["verdict"] is None  # the stand-in never answers REFUSED or COMPLIED
        assert (record.gsm8k is not None) == (record.dataset == "gsm8k")
        # psr's verdicts, from the trace the eval asks for, without the trace's hidden texts.
        assert record.twice is not None
        assert "trace" not in record.twice
        assert record.checks, record
        rounds_used = record.twice["rounds"]["used"]
        for check in record.checks:
            assert check["strategy"] == "psr"
            assert check["step"].startswith("verdict")
            assert 0.0 <= check["score"] <= 1.0
            assert 1 <= check["round"] <= rounds_used
            assert not {"prompt", "output"} & check.keys()
    # The seed picks the same items for both plans.
    by_plan = defaultdict(set)
    for record in records:
        by_plan[record.plan].add((record.dataset, record.item_id))
    assert by_plan["psr1"] == by_plan["psr2"]


def expected_rates(records: list[Record]) -> dict[str, tuple[int, int]]:
    ok = [r for r in records if r.ok]
    harmful = [r for r in ok if r.label == "harmful"]
    unsafe = [r for r in ok if r.label == "unsafe"]
    benign = [r for r in ok if r.label in {"safe", "benign"}]
    scored = [r for r in ok if r.gsm8k is not None]
    rates = {
        "attack_success": (sum(not r.refused for r in harmful), len(harmful)),
        "unsafe_compliance": (sum(not r.refused for r in unsafe), len(unsafe)),
        "over_refusal": (sum(bool(r.refused) for r in benign), len(benign)),
        "accuracy": (sum(bool(r.gsm8k and r.gsm8k["correct"]) for r in scored), len(scored)),
    }
    return {name: counts for name, counts in rates.items() if counts[1]}


def test_summary_json_and_markdown_agree_with_the_records(run: Path) -> None:
    records = load_records(run / RECORDS_FILE)
    summary = json.loads((run / SUMMARY_JSON).read_text())
    markdown = (run / SUMMARY_MD).read_text()
    assert summary["plans"]["psr2"]["headers"] == {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "2"}
    for dataset in ("advbench", "xstest", "gsm8k"):
        assert f"## {dataset}" in markdown
        for plan in PLANS:
            mine = [r for r in records if r.dataset == dataset and r.plan == plan]
            entry = summary["datasets"][dataset][plan]
            assert (entry["n"], entry["errors"]) == (len(mine), 0)
            for name, (k, n) in expected_rates(mine).items():
                assert (entry[name]["k"], entry[name]["n"]) == (k, n), (dataset, plan, name)
                assert format_rate(entry[name]) in markdown
            prompt_tokens = [r.usage["prompt_tokens"] for r in mine if r.usage]
            assert entry["cost"]["prompt_tokens_mean"] == pytest.approx(
                sum(prompt_tokens) / len(prompt_tokens)
            )
            assert f"| {plan} | {len(mine)} | 0 |" in markdown
            assert entry["llm_unparsed"] == len(mine)


def test_plots_are_written(run: Path) -> None:
    for name in (SAFETY_COST_PNG, ROUNDS_PNG):
        data = (run / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert len(data) > 10_000
