"""Training rows from the gateway's capped Redis stream `twice:telemetry`.

Each entry (written by the gateway, app/telemetry.py, with `entry_fields`) has the fields `messages` (JSON,
only where the gateway is configured to keep text), `features` (a `FeatureVector` in JSON), `rounds_granted`,
`rounds_used`, `first_harmful_round` (empty when no verdict fired), `rounds_source` (how the gateway chose the
rounds: app/rounds.py) and `outcome` (`answered`, `refused` or `error`). An entry becomes a row when it can
be labelled, without learning from the gateway's own decisions:
- a harmful verdict fired at round r: harmful, label r (capped at max_rounds);
- no verdict fired, and the answer ended before its rounds were spent, or it was granted max_rounds: every
  round the label counts was observed safe: benign, label 0;
- no verdict fired in the r < max_rounds rounds granted, all spent: censored at r (`censored_at`). The
  answer went on unchecked, so a verdict at round r + 1 or later may have been missed. Labelling it 0 would
  teach the predictor that its own choice of r was enough; training uses it as "none or above r";
- no round ran (rounds_used 0): skipped as unobserved;
- `outcome` "error", no messages and no features, or malformed fields: skipped and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from predictor.errors import LabelsError
from predictor.features import FeatureVector
from predictor.labels import LabelledRow

STREAM = "twice:telemetry"
SOURCE = "telemetry"


@dataclass(frozen=True)
class TelemetryRead:
    rows: list[LabelledRow]
    skipped: Counter[str] = field(default_factory=Counter)


def read_telemetry(url: str, max_rounds: int, stream: str = STREAM, batch: int = 1000) -> TelemetryRead:
    """Every labelled entry of the stream, oldest first."""
    client = redis.Redis.from_url(url, decode_responses=True)
    rows: list[LabelledRow] = []
    skipped: Counter[str] = Counter()
    try:
        lower = "-"
        while True:
            entries = _decoded(client.xrange(stream, min=lower, max="+", count=batch))
            for entry_id, fields in entries:
                try:
                    row = entry_row(entry_id, fields, max_rounds)
                except LabelsError as error:
                    skipped[str(error)] += 1
                    continue
                rows.append(row)
            if len(entries) < batch:
                break
            lower = f"({entries[-1][0]}"
    except redis.RedisError as error:
        raise LabelsError(f"cannot read {stream} from {url}: {error}") from error
    finally:
        client.close()
    return TelemetryRead(rows=rows, skipped=skipped)


def entry_fields(
    *,
    features: FeatureVector,
    rounds_granted: int,
    rounds_used: int,
    first_harmful_round: int | None,
    rounds_source: str,
    outcome: str,
    messages: list[dict[str, Any]] | None = None,
) -> dict[str, str]:
    """One stream entry, as `entry_row` reads it back."""
    fields = {
        "features": json.dumps(features.to_json(), separators=(",", ":")),
        "rounds_granted": str(rounds_granted),
        "rounds_used": str(rounds_used),
        "first_harmful_round": "" if first_harmful_round is None else str(first_harmful_round),
        "rounds_source": rounds_source,
        "outcome": outcome,
    }
    if messages is not None:
        fields["messages"] = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
    return fields


def _decoded(raw: Any) -> list[tuple[str, dict[str, str]]]:
    # The client decodes responses to str; this only narrows redis-py's broad return type.
    return [
        (str(entry_id), {str(k): str(v) for k, v in (fields or {}).items()}) for entry_id, fields in raw or []
    ]


def entry_row(entry_id: str, fields: Mapping[str, str], max_rounds: int) -> LabelledRow:
    """One stream entry as a labelled row; raises `LabelsError` naming why it cannot be used."""
    if fields.get("outcome") == "error":
        raise LabelsError("outcome error")
    try:
        rounds_used = int(fields["rounds_used"])
        rounds_granted = int(fields["rounds_granted"])
        first = fields.get("first_harmful_round", "")
        first_harmful = int(first) if first else None
        messages = json.loads(fields["messages"]) if fields.get("messages") else None
        features = FeatureVector.from_json(json.loads(fields["features"])) if fields.get("features") else None
    except (KeyError, ValueError, TypeError) as error:
        raise LabelsError("malformed") from error
    if messages is None and features is None:
        raise LabelsError("no messages or features")
    if messages is not None and not (
        isinstance(messages, list) and all(isinstance(m, dict) for m in messages)
    ):
        raise LabelsError("malformed")
    if first_harmful is None and rounds_used == 0:
        raise LabelsError("unobserved (no round ran)")
    censored = first_harmful is None and rounds_used >= rounds_granted and rounds_granted < max_rounds
    return LabelledRow(
        id=entry_id,
        source=SOURCE,
        harmful=first_harmful is not None,
        label_rounds=0 if first_harmful is None else min(first_harmful, max_rounds),
        messages=tuple(messages) if messages is not None else None,
        features=features,
        observed_first_harmful_round=first_harmful,
        censored_at=rounds_granted if censored else None,
    )
