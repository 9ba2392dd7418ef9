"""Evaluation sets: one loader per public set, a simple JSONL format for anything else, seeded sampling.

Every loader turns its file into `Item`s: a chat conversation to send, a `label` that says what a good
answer does (`harmful` and `unsafe`: refuse; `safe` and `benign`: comply), and for GSM8K the reference
number. The files are read unchanged from a data folder laid out as /work/shared/data is (one folder per
set); `evaluation/data/` ships small subsets with the same layout.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal, cast

from evaluation.splits import SPLITS, Split, part_of

Label = Literal["harmful", "unsafe", "safe", "benign"]
LABELS: Final = frozenset({"harmful", "unsafe", "safe", "benign"})
# Labels whose prompts a good model refuses; refusing any other label is over-refusal.
REFUSE_LABELS: Final = frozenset({"harmful", "unsafe"})

SHIPPED_DATA_DIR: Final = Path(__file__).resolve().parent / "data"

# Appended to each GSM8K question so the final number is the last one in a good answer.
GSM8K_INSTRUCTION: Final = (
    "Solve the problem step by step. End with the final answer as a number on its own last line."
)
GSM8K_MIN_TOKENS: Final = 512
"""Enough for a 1.5B model's step-by-step working to reach its final line (256 cut some answers short)."""


class DatasetError(ValueError):
    """A data file or a dataset spec that cannot be used."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Item:
    dataset: str
    item_id: str
    messages: tuple[Message, ...]
    label: Label
    reference: str | None = None
    request: str | None = None
    """What the answer is judged against when it is not the last user turn (a jailbreak's own request)."""
    min_tokens: int = 0
    """Tokens the item needs to be answered in full, whatever `--max-tokens` says (GSM8K's working)."""
    family: str | None = None
    """The set this one is another form of (`jailbreak_dan` for `jailbreak_dan_turns`): a limit draws the
    same items from both, so their rows compare item for item."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def prompt_text(self) -> str:
        """What a judge reads as the request: `request`, else the last user turn."""
        if self.request is not None:
            return self.request
        users = [m.content for m in self.messages if m.role == "user"]
        return users[-1] if users else ""

    @property
    def split(self) -> Split:
        """The item's part (evaluation/splits.py): its own when it has one, else that of its identity."""
        own = self.meta.get("split")
        return cast(Split, own) if own in SPLITS else part_of(f"{self.dataset}:{self.item_id}")


def _user(text: str) -> tuple[Message, ...]:
    return (Message("user", text),)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path}:{number}: not JSON ({error.msg})") from error
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{number}: expected a JSON object")
            rows.append(row)
    return rows


def load_advbench(data_dir: Path) -> list[Item]:
    rows = _read_csv(data_dir / "advbench" / "harmful_behaviors.csv")
    # The file has no id column; the 1-based row number is the id other papers use.
    return [
        Item("advbench", str(number), _user(row["goal"]), "harmful")
        for number, row in enumerate(rows, start=1)
    ]


def load_xstest(data_dir: Path) -> list[Item]:
    items = []
    for row in _read_csv(data_dir / "xstest" / "xstest_prompts.csv"):
        label = row["label"]
        if label not in {"safe", "unsafe"}:
            raise DatasetError(f"xstest row {row['id']}: unknown label {label!r}")
        items.append(
            Item(
                "xstest",
                row["id"],
                _user(row["prompt"]),
                cast(Label, label),
                meta={"type": row["type"], "focus": row["focus"]},
            )
        )
    return items


def load_xstest_safe(data_dir: Path) -> list[Item]:
    """XSTest's 250 safe prompts alone, for over-refusal; each keeps the part it has in `xstest`."""
    return [
        replace(item, dataset="xstest_safe", family="xstest", meta={**item.meta, "split": item.split})
        for item in load_xstest(data_dir)
        if item.label == "safe"
    ]


def _load_fastchat(name: str, data_dir: Path) -> list[Item]:
    rows = _read_jsonl(data_dir / name / "question.jsonl")
    return [
        Item(
            name,
            str(row["question_id"]),
            _user(row["turns"][0]),
            "benign",
            meta={"category": row["category"]},
        )
        for row in rows
    ]


def load_mt_bench(data_dir: Path) -> list[Item]:
    """First turn only: the second turn follows up on the model's own first answer."""
    return _load_fastchat("mt_bench", data_dir)


def load_vicuna_bench(data_dir: Path) -> list[Item]:
    return _load_fastchat("vicuna_bench", data_dir)


def load_self_instruct(data_dir: Path) -> list[Item]:
    rows = _read_jsonl(data_dir / "self_instruct_user_oriented" / "user_oriented_instructions.jsonl")
    items = []
    for row in rows:
        instance_input = row["instances"][0]["input"]
        prompt = f"{row['instruction']}\n\n{instance_input}" if instance_input else row["instruction"]
        items.append(
            Item("self_instruct", row["id"], _user(prompt), "benign", meta={"app": row["motivation_app"]})
        )
    return items


def gsm8k_reference(answer: str) -> str:
    """The final number of a GSM8K solution: the text after its `####` marker."""
    _, marker, final = answer.rpartition("####")
    if not marker:
        raise DatasetError(f"GSM8K answer without '####': {answer[-60:]!r}")
    return final.strip()


def load_gsm8k(data_dir: Path) -> list[Item]:
    rows = _read_jsonl(data_dir / "gsm8k" / "test.jsonl")
    return [
        Item(
            "gsm8k",
            str(number),
            _user(f"{row['question']}\n\n{GSM8K_INSTRUCTION}"),
            "benign",
            reference=gsm8k_reference(row["answer"]),
            min_tokens=GSM8K_MIN_TOKENS,
        )
        for number, row in enumerate(rows, start=1)
    ]


def _messages_of(row: dict[str, Any], where: str) -> tuple[Message, ...]:
    if "messages" in row:
        raw = row["messages"]
        if not isinstance(raw, list) or not raw:
            raise DatasetError(f"{where}: 'messages' must be a non-empty list")
        messages = []
        for message in raw:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                raise DatasetError(f"{where}: each message needs a string 'role' and 'content'")
            messages.append(Message(str(message["role"]), message["content"]))
        return tuple(messages)
    if isinstance(row.get("prompt"), str):
        return _user(row["prompt"])
    raise DatasetError(f"{where}: needs 'prompt' (a string) or 'messages'")


def load_jsonl(path: Path, name: str | None = None) -> list[Item]:
    """The generic format: one object a line, `{"id", "prompt" or "messages", "label", "reference"?}`.

    `label` defaults to `benign`; `reference`, when present, is the number GSM8K-style scoring expects.
    Any other field is kept in `meta` and copied to the records.
    """
    dataset = name or path.stem
    items = []
    for number, row in enumerate(_read_jsonl(path), start=1):
        where = f"{path}:{number}"
        label = row.get("label", "benign")
        if label not in LABELS:
            raise DatasetError(f"{where}: label {label!r} is not one of {sorted(LABELS)}")
        reference = row.get("reference")
        meta = {k: v for k, v in row.items() if k not in {"id", "prompt", "messages", "label", "reference"}}
        items.append(
            Item(
                dataset,
                str(row.get("id", number)),
                _messages_of(row, where),
                cast(Label, label),
                reference=None if reference is None else str(reference),
                meta=meta,
            )
        )
    ids = [item.item_id for item in items]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: item ids are not unique")
    return items


def default_data_dir() -> Path:
    """`TWICE_DATA_DIR`, else `../shared/data` beside the repository, else the shipped subsets."""
    configured = os.environ.get("TWICE_DATA_DIR")
    if configured:
        return Path(configured)
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "data"
    return beside_repo if beside_repo.is_dir() else SHIPPED_DATA_DIR


def in_split(items: Sequence[Item], split: Split | None) -> list[Item]:
    """The items of one part; all of them for None."""
    return [item for item in items if split is None or item.split == split]


def sample(items: Sequence[Item], limit: int | None, seed: int) -> list[Item]:
    """`limit` items drawn with `seed`, in file order; all of them without a limit.

    The generator is seeded per dataset (per family, for another form of a set), so adding a set to a run does
    not change what another set draws.
    """
    if limit is None or limit >= len(items):
        return list(items)
    first = items[0]
    chosen = sorted(random.Random(f"{seed}:{first.family or first.dataset}").sample(range(len(items)), limit))
    return [items[index] for index in chosen]
