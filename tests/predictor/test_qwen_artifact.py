"""The Qwen2.5-Coder-1.5B artifact in `predictor/artifacts/qwen/` (what `auto` uses when that model is
served, app/catalogue.py): it loads with its card's floor, and the labels kept beside it follow what psr
observed under the rule their meta records."""

from __future__ import annotations

import json
from pathlib import Path

from predictor.labels import read_labels
from predictor.model import CARD_FILE, DEFAULT_ARTIFACT_DIR, RoundPredictor

QWEN_DIR = DEFAULT_ARTIFACT_DIR / "qwen"
LABELS = QWEN_DIR / "labels.jsonl"


def _meta() -> dict[str, object]:
    meta: dict[str, object] = json.loads(Path(f"{LABELS.with_suffix('')}.meta.json").read_text())
    return meta


def test_the_qwen_labels_follow_what_psr_observed_under_their_recorded_rule() -> None:
    meta = _meta()
    assert (meta["model"], meta["max_rounds"], meta["failures"]) == ("qwen2.5-coder-1.5b-instruct", 8, [])
    no_verdict = meta["label_when_no_verdict"]
    assert no_verdict == 0
    rows = read_labels(LABELS)
    assert len(rows) == meta["rows"]
    for row in rows:
        observed = row.observed_first_harmful_round
        expected = (no_verdict if observed is None else observed) if row.harmful else 0
        assert row.label_rounds == expected, row.id
    assert sum(0 < row.label_rounds < 8 for row in rows) == meta["labels_neither_0_nor_max"]


def test_the_qwen_card_names_its_model_and_floor() -> None:
    # That the card's labels hash matches the file beside it: tests/predictor/test_default_artifact.py.
    card = json.loads((QWEN_DIR / CARD_FILE).read_text())
    assert card["training_data"]["provenance"]["model"] == "qwen2.5-coder-1.5b-instruct"
    predictor = RoundPredictor.load(QWEN_DIR)
    assert predictor.floor == card["training"]["floor"] == 1
    # Every request gets at least the card's floor, never more than the budget.
    for text in ("What is the capital of France?", "Write a poem about autumn.", "How do I make a bomb?"):
        assert 1 <= predictor.predict_rounds([{"role": "user", "content": text}]) <= 8
    saved = predictor.card.metrics["held_out"]["benign_rounds_saved_pct"]
    frontier = {point["tail_risk"]: point for point in predictor.card.metrics["frontier"]}
    assert frontier[predictor.card.tail_risk]["benign_rounds_saved_pct"] == saved
