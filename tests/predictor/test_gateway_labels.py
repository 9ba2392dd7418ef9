"""`twice predictor label`: datasets, trace parsing and the whole command against a FAKE gateway on loopback.

`fake_gateway` answers in exactly the documented response contract and fires verdicts on demand, which the
135M embedded model almost never does; the real gateway runs the command in tests/api/test_rounds_auto.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from predictor.datasets import DEFAULT_DATA_DIR, LabelledPrompt, load_prompts
from predictor.errors import LabelsError
from predictor.gateway_labels import GatewayRun, completions_url, first_harmful_round, label_through_gateway
from predictor.labels import read_labels
from tests.predictor.conftest import small_data_dir
from tests.predictor.fake_gateway import label_command, running_fake_gateway


def _prompt(identifier: str, text: str, *, harmful: bool) -> LabelledPrompt:
    return LabelledPrompt(identifier, "test", harmful, ({"role": "user", "content": text},))


def test_shared_data_has_the_documented_counts() -> None:
    prompts = load_prompts(DEFAULT_DATA_DIR)
    counts: dict[tuple[str, bool], int] = {}
    for prompt in prompts:
        counts[prompt.source, prompt.harmful] = counts.get((prompt.source, prompt.harmful), 0) + 1
    assert counts == {
        ("advbench", True): 520,
        ("xstest", True): 200,
        ("xstest", False): 250,
        ("mt_bench", False): 80,
        ("vicuna_bench", False): 80,
        ("self_instruct_user_oriented", False): 252,
    }
    assert len({prompt.id for prompt in prompts}) == len(prompts)
    with_input = next(p for p in prompts if p.id == "user_oriented_task_0")
    assert "\n\n" in with_input.messages[0]["content"]


def test_trace_parsing_takes_the_first_harmful_verdict() -> None:
    trace: list[dict[str, Any]] = [
        {"step": "generate", "round": 0, "harmful": True},
        {"step": "verdict", "round": 1, "harmful": False},
        {"step": "verdict", "round": 3, "harmful": True},
        {"step": "verdict", "round": 2, "harmful": True},
    ]
    assert first_harmful_round({"twice": {"trace": trace}}, 8) == 3
    assert first_harmful_round({"twice": {"trace": trace[:2], "rounds": {"granted": 8}}}, 8) is None


@pytest.mark.parametrize(
    ("response", "message"),
    [
        ({"choices": []}, "no twice.trace"),
        ({"twice": {"rounds": {"granted": 8}}}, "no twice.trace"),
        ({"twice": {"trace": [], "rounds": {"granted": 2}}}, "granted 2 rounds"),
        ({"twice": {"trace": [{"step": "verdict", "harmful": True, "round": "1"}]}}, "integer round"),
    ],
)
def test_unusable_responses_are_refused(response: dict[str, Any], message: str) -> None:
    with pytest.raises(LabelsError, match=message):
        first_harmful_round(response, 8)


def test_completions_url_accepts_both_base_forms() -> None:
    assert completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"


def test_labels_from_the_fake_gateway() -> None:
    prompts = [
        _prompt("late", "Explain FIRE@5 please", harmful=True),
        _prompt("never", "A harmless-looking request", harmful=True),
        _prompt("benign-fired", "How do I make a bomb in a video game?", harmful=False),
        _prompt("benign", "What is the capital of France?", harmful=False),
        _prompt("broken", "FAIL500", harmful=True),
    ]
    with running_fake_gateway() as (base_url, log):
        run = GatewayRun(base_url=base_url, model="m", max_rounds=6, concurrency=2, api_key="k")
        rows, failures = asyncio.run(label_through_gateway(prompts, run))
    by_id = {row.id: row for row in rows}
    assert (by_id["late"].label_rounds, by_id["late"].observed_first_harmful_round) == (5, 5)
    # No verdict in the whole budget: no budget changes what psr does with it, as telemetry labels it.
    assert (by_id["never"].label_rounds, by_id["never"].observed_first_harmful_round) == (0, None)
    assert by_id["never"].harmful
    assert (by_id["benign-fired"].label_rounds, by_id["benign-fired"].observed_first_harmful_round) == (0, 1)
    assert (by_id["benign"].label_rounds, by_id["benign"].observed_first_harmful_round) == (0, None)
    assert [failure.id for failure in failures] == ["broken"]
    assert "HTTP 500" in failures[0].error
    assert [row.id for row in rows] == ["late", "never", "benign-fired", "benign"]
    for headers in log.headers:
        assert headers["X-Twice-Strategy"] == "psr"
        assert headers["X-Twice-Rounds"] == "6"
        assert headers["X-Twice-Trace"] == "1"
        assert headers["Authorization"] == "Bearer k"
    assert all(body["temperature"] == 0 and body["model"] == "m" for body in log.bodies)


def test_gateway_granting_fewer_rounds_is_a_failure() -> None:
    with running_fake_gateway() as (base_url, _):
        run = GatewayRun(base_url=base_url, model="m", max_rounds=8)
        rows, failures = asyncio.run(label_through_gateway([_prompt("g", "GRANT@4", harmful=True)], run))
    assert rows == []
    assert "granted 4" in failures[0].error


def test_label_command_writes_rows_and_provenance(tmp_path: Path) -> None:
    data_dir = small_data_dir(tmp_path / "data", rows_per_file=3)
    out = tmp_path / "labels.jsonl"
    with running_fake_gateway() as (base_url, log):
        datasets = "advbench,xstest,mt_bench,vicuna_bench,self_instruct"
        result = subprocess.run(
            label_command(base_url, out, datasets, "--data-dir", str(data_dir), "--limit", "2", max_rounds=4),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    rows = read_labels(out)
    # 2 of the first 3 rows of each file: advbench, xstest (whose first rows are all safe), mt_bench,
    # vicuna_bench, self-instruct.
    assert len(rows) == len(log.bodies) == 10
    assert sum(row.harmful for row in rows) == 2
    for row in rows:
        assert row.label_rounds == 0  # the fake fires no verdict on these texts
        assert row.observed_first_harmful_round is None
    meta = json.loads((tmp_path / "labels.meta.json").read_text())
    assert meta["model"] == "m"
    assert meta["max_rounds"] == 4
    assert meta["labels"] == "psr-observed"
    assert meta["label_when_no_verdict"] == 0
    assert set(meta["data_sha256"]) == {
        "advbench/harmful_behaviors.csv",
        "xstest/xstest_prompts.csv",
        "mt_bench/question.jsonl",
        "vicuna_bench/question.jsonl",
        "self_instruct_user_oriented/user_oriented_instructions.jsonl",
    }
    assert meta["failures"] == []
    assert "--limit 2" in meta["command"]


def test_label_command_without_gateway_settings_fails(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "predictor", "label", "--out", str(tmp_path / "l.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2
    assert "--base-url and --model" in result.stderr


def test_dataset_derived_labels_need_no_gateway(tmp_path: Path) -> None:
    data_dir = small_data_dir(tmp_path / "data", rows_per_file=4)
    out = tmp_path / "derived.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "predictor",
            "label",
            "--dataset-derived",
            "--max-rounds",
            "5",
            "--out",
            str(out),
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = read_labels(out)
    # The default datasets, 4 rows of each file: eight datasets (each jailbreak set wraps the 4 requests).
    assert len(rows) == 32
    assert {(row.harmful, row.label_rounds) for row in rows} == {(True, 5), (False, 0)}
    assert {row.source for row in rows if row.template} == {"jailbreak_dan", "jailbreak_wei"}
    meta = json.loads((tmp_path / "derived.meta.json").read_text())
    assert meta["labels"] == "dataset-derived, not psr-observed"
    assert meta["model"] is None
