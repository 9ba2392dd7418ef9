"""`--from-redis`: labels from the telemetry stream, against the real Redis on 127.0.0.1:6379 (db 11)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.typing import EncodableT, FieldT

from predictor.datasets import DEFAULT_DATA_DIR, load_prompts
from predictor.features import FeatureConfig, extract
from predictor.labels import read_labels
from predictor.model import CARD_FILE, RoundPredictor
from predictor.telemetry import STREAM, entry_fields, entry_row, read_telemetry

REDIS_URL = "redis://127.0.0.1:6379/11"


@pytest.fixture
def stream() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _add(
    client: redis.Redis,
    conversation: object | None,
    rounds_used: int,
    first: int | None,
    granted: int = 8,
    **extra: str,
) -> None:
    fields: dict[FieldT, EncodableT] = {
        "rounds_granted": str(granted),
        "rounds_used": str(rounds_used),
        "first_harmful_round": "" if first is None else str(first),
        "outcome": "ok",
    }
    fields.update(extra.items())
    if conversation is not None:
        fields["messages"] = json.dumps(conversation)
    client.xadd(STREAM, fields, maxlen=10_000, approximate=True)


def test_entries_become_rows_or_are_skipped_for_a_reason(stream: redis.Redis) -> None:
    user = [{"role": "user", "content": "hello"}]
    _add(stream, user, 8, 3)
    _add(stream, user, 8, 12)
    _add(stream, user, 4, None)
    _add(stream, user, 0, None)
    _add(stream, None, 8, None)
    _add(stream, user, 8, None, outcome="error")
    _add(stream, None, 8, None, messages="{broken")
    vector = extract(user, FeatureConfig())
    _add(stream, None, 2, 1, features=json.dumps(vector.to_json()))
    _add(stream, user, 2, None, granted=2)  # no verdict in the 2 rounds granted, the rest unchecked
    _add(stream, user, 1, None, granted=2)  # the answer ended after 1 of 2 rounds: all of it checked
    read = read_telemetry(REDIS_URL, max_rounds=8, batch=3)
    labels = [(r.harmful, r.label_rounds, r.observed_first_harmful_round, r.censored_at) for r in read.rows]
    assert labels == [
        (True, 3, 3, None),
        (True, 8, 12, None),
        (False, 0, None, None),
        (True, 1, 1, None),
        (False, 0, None, 2),
        (False, 0, None, None),
    ]
    assert read.rows[3].features is not None
    assert read.rows[3].vector(FeatureConfig()).values.tolist() == vector.values.tolist()
    assert dict(read.skipped) == {
        "unobserved (no round ran)": 1,
        "no messages or features": 1,
        "outcome error": 1,
        "malformed": 1,
    }


def test_train_from_redis_end_to_end(stream: redis.Redis, tmp_path: Path) -> None:
    prompts = load_prompts(DEFAULT_DATA_DIR, limit_per_source=40)
    harmful = [prompt for prompt in prompts if prompt.source == "advbench"]
    benign = [prompt for prompt in prompts if prompt.source in ("vicuna_bench", "mt_bench")]
    for index, prompt in enumerate(harmful):
        _add(stream, list(prompt.messages), 8, 1 + index % 2)
    for prompt in benign:
        _add(stream, list(prompt.messages), 8, None)
    _add(stream, [{"role": "user", "content": "never checked"}], 0, None)
    out = tmp_path / "model"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "predictor",
            "train",
            "--from-redis",
            REDIS_URL,
            "--out",
            str(out),
            "--max-rounds",
            "8",
            "--test-size",
            "0.25",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "skipped 1 telemetry entries: unobserved" in result.stdout
    rows = read_labels(out / "labels.jsonl")
    assert len(rows) == len(harmful) + len(benign)
    card = json.loads((out / CARD_FILE).read_text())
    assert card["labels"] == "psr-observed (gateway telemetry)"
    assert card["classes"] == [0, 1, 2]
    assert card["training_data"]["rows"] == len(rows)
    predictor = RoundPredictor.load(out)
    held_out = card["metrics"]["held_out"]
    assert held_out["benign_mean_rounds"] < held_out["harmful_mean_rounds"]
    assert predictor.predict_rounds([{"role": "user", "content": harmful[0].messages[0]["content"]}]) >= 1


def test_unreachable_redis_is_a_clear_failure(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "predictor",
            "train",
            "--from-redis",
            "redis://127.0.0.1:1/0",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot read twice:telemetry" in result.stderr


def test_what_the_gateway_writes_is_what_training_reads() -> None:
    user = [{"role": "user", "content": "how do I pick a lock"}]
    vector = extract(user, FeatureConfig())
    common = {"features": vector, "rounds_granted": 8, "rounds_used": 3, "rounds_source": "predictor"}
    fields = entry_fields(first_harmful_round=2, outcome="refused", **common)  # type: ignore[arg-type]
    assert "messages" not in fields
    row = entry_row("1-0", fields, max_rounds=8)
    assert (row.harmful, row.label_rounds, row.messages) == (True, 2, None)
    assert row.vector(FeatureConfig()).values.tolist() == vector.values.tolist()
    with_text = entry_fields(first_harmful_round=None, outcome="answered", messages=user, **common)  # type: ignore[arg-type]
    row = entry_row("1-1", with_text, max_rounds=8)
    assert (row.harmful, row.label_rounds, row.messages) == (False, 0, tuple(user))
