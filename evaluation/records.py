"""Per-item records and the append-only `records.jsonl` that makes a run resumable.

One line per finished request, written and flushed as soon as it finishes, so an interrupted run loses at
most the requests in flight (and perhaps a torn last line, which loading skips). A rerun skips every
(plan, dataset, item) that already has a record without an error; errors are retried. When an item has
several records, the last one counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

RECORDS_FILE: Final = "records.jsonl"
logger = logging.getLogger(__name__)

Key = tuple[str, str, str]


@dataclass(frozen=True)
class Record:
    plan: str
    dataset: str
    item_id: str
    label: str
    prompt: str
    response: str | None = None
    finish_reason: str | None = None
    refusal: dict[str, Any] | None = None
    llm_judge: dict[str, Any] | None = None
    gsm8k: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    twice: dict[str, Any] | None = None
    checks: list[dict[str, Any]] | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    latency_s: float | None = None
    attempts: int = 0
    error: str | None = None
    model: str = ""
    seed: int | None = None

    @property
    def key(self) -> Key:
        return (self.plan, self.dataset, self.item_id)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def refused(self) -> bool | None:
        return None if self.refusal is None else bool(self.refusal.get("refused"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        known = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in known})


def load_records(path: Path) -> list[Record]:
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(Record.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as error:
                # An interrupted write can leave a torn last line; that item is simply redone.
                logger.warning("%s:%d: skipping an unreadable record (%s)", path, number, error)
    return records


def latest(records: Iterable[Record]) -> list[Record]:
    """One record per (plan, dataset, item): the last written, in first-seen order."""
    by_key: dict[Key, Record] = {}
    for record in records:
        by_key[record.key] = record
    return list(by_key.values())


def done_keys(records: Iterable[Record]) -> set[Key]:
    return {record.key for record in records if record.ok}


class RecordWriter:
    """Appends records to `records.jsonl`, one flushed line each."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._ensure_line_start()
        self._handle = path.open("a", encoding="utf-8")

    def _ensure_line_start(self) -> None:
        # After a torn write the file may end mid-line; start the next record on a line of its own.
        if self._path.exists() and self._path.stat().st_size:
            with self._path.open("rb") as handle:
                handle.seek(-1, 2)
                if handle.read(1) != b"\n":
                    with self._path.open("a", encoding="utf-8") as appender:
                        appender.write("\n")

    def write(self, record: Record) -> None:
        self._handle.write(record.to_json() + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()
