"""The labelled prompts the predictor is labelled on, read from the shared evaluation data folder.

Harmful: AdvBench `harmful_behaviors.csv` (`goal`), XSTest prompts labelled `unsafe`.
Benign: XSTest prompts labelled `safe`, MT-bench first turns, vicuna-bench, self-instruct user-oriented
instructions (instruction, a blank line, then the instance input when there is one). The folder layout is the
one described in the data folder's README.md.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from predictor.errors import LabelsError
from predictor.labels import sha256_file

DEFAULT_DATA_DIR = Path(
    os.environ.get("TWICE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
"""The public evaluation sets: `TWICE_DATA_DIR`, else `shared/data` beside the repository."""

SOURCE_FILES: dict[str, str] = {
    "advbench": "advbench/harmful_behaviors.csv",
    "xstest": "xstest/xstest_prompts.csv",
    "mt_bench": "mt_bench/question.jsonl",
    "vicuna_bench": "vicuna_bench/question.jsonl",
    "self_instruct_user_oriented": "self_instruct_user_oriented/user_oriented_instructions.jsonl",
}


@dataclass(frozen=True)
class LabelledPrompt:
    id: str
    source: str
    harmful: bool
    messages: tuple[dict[str, Any], ...]


def load_prompts(data_dir: Path, limit_per_source: int | None = None) -> list[LabelledPrompt]:
    """Every labelled prompt, in file order; `limit_per_source` keeps the first N of each source."""
    prompts: list[LabelledPrompt] = []
    for source, reader in _READERS.items():
        path = data_dir / SOURCE_FILES[source]
        if not path.is_file():
            raise LabelsError(f"missing data file {path}")
        taken: dict[bool, int] = {True: 0, False: 0}
        for prompt in reader(path):
            # XSTest mixes both labels, so the limit applies to each label of a source separately.
            if limit_per_source is not None and taken[prompt.harmful] >= limit_per_source:
                continue
            taken[prompt.harmful] += 1
            prompts.append(prompt)
    return prompts


def data_hashes(data_dir: Path) -> dict[str, str]:
    return {source: sha256_file(data_dir / name) for source, name in SOURCE_FILES.items()}


def _user(text: str) -> tuple[dict[str, Any], ...]:
    return ({"role": "user", "content": text},)


def _advbench(path: Path) -> Iterator[LabelledPrompt]:
    with path.open(encoding="utf-8", newline="") as rows:
        for number, row in enumerate(csv.DictReader(rows), start=1):
            yield LabelledPrompt(f"advbench-{number}", "advbench", True, _user(row["goal"]))


def _xstest(path: Path) -> Iterator[LabelledPrompt]:
    with path.open(encoding="utf-8", newline="") as rows:
        for row in csv.DictReader(rows):
            yield LabelledPrompt(
                f"xstest-{row['id']}", "xstest", row["label"] == "unsafe", _user(row["prompt"])
            )


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _mt_bench(path: Path) -> Iterator[LabelledPrompt]:
    for row in _jsonl(path):
        yield LabelledPrompt(f"mt_bench-{row['question_id']}", "mt_bench", False, _user(row["turns"][0]))


def _vicuna(path: Path) -> Iterator[LabelledPrompt]:
    for row in _jsonl(path):
        yield LabelledPrompt(
            f"vicuna_bench-{row['question_id']}", "vicuna_bench", False, _user(row["turns"][0])
        )


def _self_instruct(path: Path) -> Iterator[LabelledPrompt]:
    for row in _jsonl(path):
        text = row["instruction"]
        instance_input = row["instances"][0]["input"]
        if instance_input:
            text = f"{text}\n\n{instance_input}"
        yield LabelledPrompt(row["id"], "self_instruct_user_oriented", False, _user(text))


_READERS = {
    "advbench": _advbench,
    "xstest": _xstest,
    "mt_bench": _mt_bench,
    "vicuna_bench": _vicuna,
    "self_instruct_user_oriented": _self_instruct,
}
