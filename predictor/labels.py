"""Labelled rows: the JSON-lines format `twice predictor label` writes and `twice predictor train` reads.

One row: `{"id", "source", "harmful": bool, "messages": [...], "label_rounds": int,
"observed_first_harmful_round": int | null}`, and when known `part` (the evaluation part, `dev` or
`heldout`), and for a jailbreak `template` and `request`; files written before these fields still read.
Rows read from telemetry may carry `features` (a `FeatureVector` in JSON) instead of `messages`, and
`censored_at`: no verdict fired in the rounds the request was granted and its answer went on unchecked, so
its label is only known to be none or above that.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from predictor.errors import LabelsError
from predictor.features import FeatureConfig, FeatureVector, extract

DATASET_DERIVED = "dataset-derived, not psr-observed"
PSR_OBSERVED = "psr-observed"
"""What a set of labels is (a card's `labels`): harmfulness from the dataset, or psr's observed verdicts."""
EVAL_ONLY_SOURCES = frozenset({"self_instruct_user_oriented", "self_instruct"})
"""Sources never trained on: the self-instruct authors ask that their set be used for evaluation only."""

PARTS = ("dev", "heldout")
"""The evaluation's parts (evaluation/splits.py): nothing is fitted or tuned on `heldout`."""


@dataclass(frozen=True)
class LabelledRow:
    id: str
    source: str
    harmful: bool
    label_rounds: int
    messages: tuple[Mapping[str, Any], ...] | None = None
    features: FeatureVector | None = None
    observed_first_harmful_round: int | None = None
    censored_at: int | None = None
    """Set when the label is only known to be 0 (no verdict would fire) or above this round."""
    part: str | None = None
    """The evaluation part (`dev` or `heldout`, evaluation/splits.py); None in older files and telemetry."""
    template: str | None = None
    request: str | None = None
    """A jailbreak's template name and the request it wraps."""

    def vector(self, config: FeatureConfig) -> FeatureVector:
        if self.messages is not None:
            return extract(self.messages, config)
        if self.features is None or self.features.n_features != config.n_features:
            raise LabelsError(f"row {self.id}: no messages and no features of width {config.n_features}")
        return self.features

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "source": self.source, "harmful": self.harmful}
        if self.messages is not None:
            row["messages"] = [dict(message) for message in self.messages]
        if self.features is not None:
            row["features"] = self.features.to_json()
        row["label_rounds"] = self.label_rounds
        row["observed_first_harmful_round"] = self.observed_first_harmful_round
        if self.censored_at is not None:
            row["censored_at"] = self.censored_at
        for name, value in (("part", self.part), ("template", self.template), ("request", self.request)):
            if value is not None:
                row[name] = value
        return row

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabelledRow:
        messages = data.get("messages")
        features = data.get("features")
        observed = data.get("observed_first_harmful_round")
        censored_at = data.get("censored_at")
        if messages is None and features is None:
            raise ValueError("a row needs messages or features")
        if messages is not None and not (
            isinstance(messages, list) and all(isinstance(message, dict) for message in messages)
        ):
            raise ValueError("messages must be a list of objects")
        part = data.get("part")
        if part not in (None, *PARTS):
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        return cls(
            id=str(data["id"]),
            source=str(data["source"]),
            harmful=_strict_bool(data["harmful"]),
            label_rounds=_strict_int(data["label_rounds"]),
            messages=tuple(messages) if messages is not None else None,
            features=FeatureVector.from_json(features) if features is not None else None,
            observed_first_harmful_round=None if observed is None else _strict_int(observed),
            censored_at=None if censored_at is None else _strict_int(censored_at),
            part=part,
            template=_optional_str(data.get("template")),
            request=_optional_str(data.get("request")),
        )


def read_labels(path: Path) -> list[LabelledRow]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(LabelledRow.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError) as error:
                raise LabelsError(f"{path}:{number}: {error}") from error
    if not rows:
        raise LabelsError(f"{path}: no labelled rows")
    return rows


def resume_labels(path: Path) -> list[LabelledRow]:
    """The rows already in a labels file being appended to, none when it does not exist. A last line cut
    short by a crash (no newline at its end) is removed from the file: its request is labelled again."""
    if not path.is_file():
        return []
    content = path.read_bytes()
    complete = content[: content.rfind(b"\n") + 1]
    if complete != content:
        path.write_bytes(complete)
    return read_labels(path) if complete.strip() else []


def append_label(out: IO[str], row: LabelledRow) -> None:
    """One row, flushed to disk at once, so that a crash loses only the requests still in flight."""
    out.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")
    out.flush()
    os.fsync(out.fileno())


def write_labels(path: Path, rows: Iterable[LabelledRow]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row.to_json(), ensure_ascii=False) + "\n")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _strict_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value
