"""An interrupted `twice eval` resumes with only the items it had not finished (requests counted at a
loopback OpenAI-compatible server)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from evaluation.plans import PlanError, parse_plan
from evaluation.records import RECORDS_FILE, load_records
from evaluation.runner import merge_plans
from tests.support.vllm_stub import StubState, VllmStub, running_stub

ITEMS = 8


@pytest.fixture
def slow_stub() -> Iterator[tuple[str, VllmStub]]:
    with running_stub(StubState(latency_s=0.25)) as served:
        yield served


def eval_command(base: str, dataset: Path, out: Path, plan: str = "none=X-Twice-Strategy:none") -> list[str]:
    return [
        sys.executable, "-m", "app", "eval",
        "--base-url", f"{base}/v1", "--model", "stub-model",
        "--plan", plan,
        "--dataset", str(dataset), "--concurrency", "1", "--max-tokens", "8",
        "--no-progress", "--out", str(out),
    ]  # fmt: skip


def complete_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


def test_interrupted_run_resumes_with_the_rest(tmp_path: Path, slow_stub: tuple[str, VllmStub]) -> None:
    base, stub = slow_stub
    dataset = tmp_path / "tiny.jsonl"
    dataset.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"Count to {i}."}) + "\n" for i in range(ITEMS))
    )
    out = tmp_path / "out"
    records = out / RECORDS_FILE

    first = subprocess.Popen(
        eval_command(base, dataset, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while complete_lines(records) < 3:
        assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
        assert time.monotonic() < deadline, "the first run wrote no records"
        time.sleep(0.02)
    first.kill()  # a crash: no clean-up, no summary
    first.wait()
    if first.stderr:
        first.stderr.close()
    finished = {r.item_id for r in load_records(records)}
    assert 3 <= len(finished) < ITEMS
    assert not (out / "summary.json").exists()
    sent_before = len(stub.state.received)

    second = subprocess.run(
        eval_command(base, dataset, out), check=False, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stderr
    assert len(stub.state.received) - sent_before == ITEMS - len(finished)
    assert f"{ITEMS - len(finished)} requests ({len(finished)} already done, 0 failed)" in second.stdout
    resent = {body["messages"][-1]["content"] for body in stub.state.received[sent_before:]}
    assert resent == {f"Count to {i}." for i in range(ITEMS) if f"q{i}" not in finished}

    summary = json.loads((out / "summary.json").read_text())
    assert summary["datasets"]["tiny"]["none"]["n"] == ITEMS
    assert summary["datasets"]["tiny"]["none"]["over_refusal"]["n"] == ITEMS

    third = subprocess.run(
        eval_command(base, dataset, out), check=False, capture_output=True, text=True, timeout=120
    )
    assert third.returncode == 0, third.stderr
    assert f"0 requests ({ITEMS} already done" in third.stdout
    assert len(stub.state.received) - sent_before == ITEMS - len(finished)


def test_a_plan_name_cannot_change_its_headers_in_one_folder(tmp_path: Path) -> None:
    merge_plans(tmp_path, (parse_plan("none=X-Twice-Strategy:none"),))
    again = merge_plans(tmp_path, (parse_plan("psr2=X-Twice-Strategy:psr,X-Twice-Rounds:2"),))
    assert [plan.name for plan in again] == ["none", "psr2"]
    with pytest.raises(PlanError, match="plan 'none' ran in"):
        merge_plans(tmp_path, (parse_plan("none=X-Twice-Strategy:psr"),))


def test_records_without_texts_keep_what_the_summary_needs(tmp_path: Path, stub_url: str) -> None:
    dataset = tmp_path / "tiny.jsonl"
    dataset.write_text(
        "".join(json.dumps({"id": f"q{i}", "prompt": f"Secret prompt {i}."}) + "\n" for i in range(3))
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [*eval_command(stub_url, dataset, out), "--no-texts"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = (out / RECORDS_FILE).read_text()
    assert "Secret prompt" not in text
    records = load_records(out / RECORDS_FILE)
    assert len(records) == 3
    for record in records:
        assert record.response is None
        assert record.prompt == ""
        assert record.refused is not None  # judged before the text was dropped
        assert record.usage is not None
