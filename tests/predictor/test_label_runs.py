"""`twice predictor label` over the evaluation datasets: what each row keeps, and resumable runs against the
FAKE gateway on loopback (tests/predictor/fake_gateway.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from evaluation.datasets import load_advbench, load_mt_bench, load_self_instruct, load_xstest
from evaluation.jailbreaks import load_jailbreak_dan
from predictor.datasets import (
    DEFAULT_DATA_DIR,
    DEFAULT_LABEL_DATASETS,
    legacy_part,
    load_evaluation_prompts,
    load_prompts,
    parse_dataset_specs,
)
from predictor.errors import LabelsError
from predictor.labels import LabelledRow, read_labels, resume_labels
from tests.predictor.fake_gateway import label_command, running_fake_gateway


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def _custom_dataset(path: Path, prompts: dict[str, str], label: str = "harmful") -> Path:
    lines = [json.dumps({"id": key, "prompt": text, "label": label}) for key, text in prompts.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_default_datasets_cover_direct_jailbreak_and_benign_with_parts() -> None:
    prompts = load_evaluation_prompts(parse_dataset_specs(DEFAULT_LABEL_DATASETS), DEFAULT_DATA_DIR)
    counts = Counter((prompt.source, prompt.harmful) for prompt in prompts)
    assert counts == {
        ("advbench", True): 520,
        ("jailbreak_dan", True): 200,
        ("jailbreak_wei", True): 100,
        ("xstest", True): 200,
        ("xstest", False): 250,
        ("mt_bench", False): 80,
        ("vicuna_bench", False): 80,
        ("self_instruct", False): 60,
        ("gsm8k", False): 100,
    }
    assert len({prompt.id for prompt in prompts}) == len(prompts) == 1590
    assert {prompt.part for prompt in prompts} == {"dev", "heldout"}
    jailbreaks = [prompt for prompt in prompts if prompt.source.startswith("jailbreak_")]
    assert all(prompt.template and prompt.request for prompt in jailbreaks)
    assert all(str(prompt.request) in str(prompt.messages[0]["content"]) for prompt in jailbreaks)
    # A template belongs to one part only, so a held-out jailbreak never shares a template with dev.
    template_parts: dict[tuple[str, str | None], set[str | None]] = {}
    for prompt in jailbreaks:
        template_parts.setdefault((prompt.source, prompt.template), set()).add(prompt.part)
    assert all(len(parts) == 1 for parts in template_parts.values())
    assert all(prompt.template is None for prompt in prompts if prompt not in jailbreaks)


def test_parts_are_the_evaluation_parts() -> None:
    prompts = {
        p.id: p
        for p in load_evaluation_prompts(parse_dataset_specs("advbench,jailbreak_dan"), DEFAULT_DATA_DIR)
    }
    for item in [*load_advbench(DEFAULT_DATA_DIR), *load_jailbreak_dan(DEFAULT_DATA_DIR)]:
        assert prompts[f"{item.dataset}:{item.item_id}"].part == item.split


def test_old_ids_map_to_their_evaluation_part() -> None:
    parts = {
        f"{item.dataset}:{item.item_id}": item.split
        for loader in (load_advbench, load_xstest, load_mt_bench, load_self_instruct)
        for item in loader(DEFAULT_DATA_DIR)
    }
    old = [p for p in load_prompts(DEFAULT_DATA_DIR) if p.source != "vicuna_bench"]
    for prompt in old:
        if prompt.source == "self_instruct_user_oriented":
            key = f"self_instruct:{prompt.id}"
        else:
            key = prompt.id.replace("-", ":", 1)
        assert legacy_part(prompt.id, prompt.source) == parts[key]
    assert Counter(legacy_part(p.id, p.source) for p in old).keys() == {"dev", "heldout"}
    assert legacy_part("1700000000000-0", "telemetry") is None


def test_dataset_specs_take_both_limit_forms() -> None:
    specs = parse_dataset_specs("advbench, jailbreak_dan:200,gsm8k=5")
    assert [(spec.name, spec.limit) for spec in specs] == [
        ("advbench", None),
        ("jailbreak_dan", 200),
        ("gsm8k", 5),
    ]
    with pytest.raises(LabelsError, match="unknown dataset"):
        parse_dataset_specs("advbench,nope")


def test_new_fields_round_trip_and_old_rows_still_read(tmp_path: Path) -> None:
    row = LabelledRow(
        "jailbreak_wei:x:1",
        "jailbreak_wei",
        True,
        3,
        ({"role": "user", "content": "c"},),
        None,
        3,
        None,
        part="heldout",
        template="x",
        request="r",
    )
    assert LabelledRow.from_json(json.loads(json.dumps(row.to_json()))) == row
    old = {"id": "advbench-1", "source": "advbench", "harmful": True, "messages": [], "label_rounds": 8}
    assert LabelledRow.from_json(old).part is None
    with pytest.raises(ValueError, match="part"):
        LabelledRow.from_json({**old, "part": "test"})


def test_a_line_cut_short_is_dropped_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    whole = json.dumps({"id": "a", "source": "s", "harmful": True, "messages": [], "label_rounds": 2})
    path.write_text(whole + "\n" + whole[:20], encoding="utf-8")
    assert [row.id for row in resume_labels(path)] == ["a"]
    assert path.read_text(encoding="utf-8") == whole + "\n"
    assert resume_labels(tmp_path / "absent.jsonl") == []


def test_label_rows_keep_dataset_part_template_and_meta(tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    with running_fake_gateway() as (base_url, _):
        result = _run(label_command(base_url, out, "advbench=3,jailbreak_wei:4,xstest=2,gsm8k=2"))
    assert result.returncode == 0, result.stderr
    rows = read_labels(out)
    assert Counter(row.source for row in rows) == {"advbench": 3, "jailbreak_wei": 4, "xstest": 2, "gsm8k": 2}
    assert all(row.part in {"dev", "heldout"} for row in rows)
    assert all(row.template and row.request for row in rows if row.source == "jailbreak_wei")
    meta = json.loads((tmp_path / "labels.meta.json").read_text())
    assert (meta["model"], meta["max_rounds"], meta["max_tokens"]) == ("m", 6, 256)
    assert "gsm8k/test.jsonl" in meta["data_sha256"]
    assert "shipped:jailbreak_wei/families.json" in meta["data_sha256"]
    assert meta["labels_neither_0_nor_max"] == 0
    assert meta["rows"] == 11
    (run,) = meta["runs"]
    assert run["pending"] == run["labelled"] == 11
    assert run["failed"] == 0
    assert run["elapsed_s"] >= 0
    assert "--datasets advbench=3,jailbreak_wei:4" in run["command"]


def test_rerun_skips_labelled_ids_and_retries_failures(tmp_path: Path) -> None:
    data = _custom_dataset(
        tmp_path / "custom.jsonl",
        {"fires": "FIRE@3 now", "flaky": "FAILONCE here", "never": "plain", "benign": "hello"},
    )
    out = tmp_path / "labels.jsonl"
    with running_fake_gateway() as (base_url, log):
        first = _run(label_command(base_url, out, str(data)))
        assert first.returncode == 1
        assert "1 failed" in first.stdout
        assert sorted(row.id for row in read_labels(out)) == ["custom:benign", "custom:fires", "custom:never"]
        meta = json.loads((tmp_path / "labels.meta.json").read_text())
        assert [failure["id"] for failure in meta["failures"]] == ["custom:flaky"]
        sent_before = len(log.bodies)
        second = _run(label_command(base_url, out, str(data)))
        assert second.returncode == 0, second.stderr
        # Only the failed request is sent again.
        assert len(log.bodies) == sent_before + 1
        third = _run(label_command(base_url, out, str(data)))
        assert third.returncode == 0
        assert len(log.bodies) == sent_before + 1
    rows = {row.id: row for row in read_labels(out)}
    assert len(rows) == 4
    assert (rows["custom:flaky"].label_rounds, rows["custom:flaky"].observed_first_harmful_round) == (0, None)
    assert rows["custom:fires"].label_rounds == 3
    meta = json.loads((tmp_path / "labels.meta.json").read_text())
    assert [(run["pending"], run["labelled"]) for run in meta["runs"]] == [(4, 3), (1, 1), (0, 0)]
    assert meta["failures"] == []
    assert meta["labels_neither_0_nor_max"] == 1
    assert meta["elapsed_s_total"] == pytest.approx(sum(run["elapsed_s"] for run in meta["runs"]), abs=0.2)


def test_rerun_with_other_settings_is_refused(tmp_path: Path) -> None:
    data = _custom_dataset(tmp_path / "custom.jsonl", {"a": "plain"})
    out = tmp_path / "labels.jsonl"
    digest = "cd" * 32
    with running_fake_gateway() as (base_url, log):
        first = _run([*label_command(base_url, out, str(data)), "--model-sha256", digest])
        assert first.returncode == 0
        other = _run([*label_command(base_url, out, str(data)), "--max-tokens", "64"])
        other_model = _run([*label_command(base_url, out, str(data)), "--model-sha256", "ab" * 32])
        # Not repeating the hash is no change: the recorded one stays.
        assert _run(label_command(base_url, out, str(data))).returncode == 0
    assert other.returncode == 1
    assert "max_tokens" in other.stderr
    assert other_model.returncode == 1
    assert "model_sha256" in other_model.stderr
    assert len(log.bodies) == 1
    assert len(read_labels(out)) == 1
    assert json.loads((tmp_path / "labels.meta.json").read_text())["model_sha256"] == digest


def test_rows_are_not_added_to_a_file_labelled_under_the_old_rule(tmp_path: Path) -> None:
    data = _custom_dataset(tmp_path / "custom.jsonl", {"a": "plain", "b": "also plain"})
    out = tmp_path / "labels.jsonl"
    meta_path = tmp_path / "labels.meta.json"
    with running_fake_gateway() as (base_url, log):
        assert _run([*label_command(base_url, out, str(data)), "--limit", "1"]).returncode == 0
        meta = json.loads(meta_path.read_text())
        del meta["label_when_no_verdict"]  # as written before 2026-12-07: no verdict was labelled max_rounds
        meta_path.write_text(json.dumps(meta))
        legacy = _run(label_command(base_url, out, str(data)))
        meta["label_when_no_verdict"] = 0  # a file relabelled under the current rule takes rows again
        meta_path.write_text(json.dumps(meta))
        relabelled = _run(label_command(base_url, out, str(data)))
    assert legacy.returncode == 1
    assert "label_when_no_verdict" in legacy.stderr
    assert relabelled.returncode == 0, relabelled.stderr
    assert len(log.bodies) == 2
    assert len(read_labels(out)) == 2


def test_a_killed_run_keeps_completed_rows_and_resumes(tmp_path: Path) -> None:
    data = _custom_dataset(tmp_path / "custom.jsonl", {"fast": "FIRE@2 quick", "slow": "SLEEP@5 slow"})
    out = tmp_path / "labels.jsonl"
    with running_fake_gateway() as (base_url, log):
        process = subprocess.Popen(
            label_command(base_url, out, str(data)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while not (out.is_file() and out.read_text(encoding="utf-8").strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, "the slow request should still be in flight"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        assert [row.id for row in read_labels(out)] == ["custom:fast"]
        meta = json.loads((tmp_path / "labels.meta.json").read_text())
        assert meta["runs"][0]["ended_at"] is None
        resumed = _run(label_command(base_url, out, str(data)))
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(row.id for row in read_labels(out)) == ["custom:fast", "custom:slow"]
    assert [body["messages"][0]["content"] for body in log.bodies].count("FIRE@2 quick") == 1


def test_stop_after_leaves_the_rest_for_the_next_run(tmp_path: Path) -> None:
    data = _custom_dataset(tmp_path / "custom.jsonl", {key: f"SLEEP@1 {key}" for key in "abc"})
    out = tmp_path / "labels.jsonl"
    with running_fake_gateway() as (base_url, log):
        piece = _run([*label_command(base_url, out, str(data)), "--concurrency", "1", "--stop-after", "0.5"])
        assert piece.returncode == 0, piece.stderr
        assert "2 prompts left" in piece.stdout
        assert len(read_labels(out)) == len(log.bodies) == 1
        rest = _run(label_command(base_url, out, str(data)))
    assert rest.returncode == 0, rest.stderr
    assert len(read_labels(out)) == len(log.bodies) == 3
    meta = json.loads((tmp_path / "labels.meta.json").read_text())
    assert [(run["pending"], run["labelled"]) for run in meta["runs"]] == [(3, 1), (2, 2)]
