"""The labelled prompts the predictor is labelled on, read from the shared evaluation data folder.

`load_evaluation_prompts` reads the evaluation's datasets (`evaluation/registry.py`), so every prompt keeps
its evaluation part (dev/heldout, `evaluation/splits.py`) and, for a jailbreak, its template and request. Its
ids are `DATASET:ITEM_ID`, the key the evaluation derives a part from.

`load_prompts` is the older fixed set, kept for the tests and benchmarks that use it:
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
from typing import Any, cast

from evaluation.datasets import REFUSE_LABELS, SHIPPED_DATA_DIR, DatasetError, Item, sample
from evaluation.jailbreaks import JAILBREAK_LOADERS
from evaluation.registry import DatasetSpec, load
from evaluation.splits import Split, part_of
from predictor.errors import LabelsError
from predictor.labels import PARTS, LabelledRow, sha256_file

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


DEFAULT_LABEL_DATASETS = (
    "advbench,jailbreak_dan=200,jailbreak_wei=100,xstest,mt_bench,vicuna_bench,self_instruct=60,gsm8k=100"
)
"""Harmful asked directly (AdvBench, XSTest unsafe) and wrapped in jailbreaks, and benign (MT-bench, Vicuna,
self-instruct, XSTest safe, GSM8K): 1,590 prompts. Limits draw a seeded sample as `twice eval` does.
self-instruct is never fitted on (`EVAL_ONLY_SOURCES`), so it is sampled: each benign prompt costs a whole
8-round psr answer (about 30 s on 2 CPU threads with the 1.5B model), and 60 report its rows well enough."""

DATASET_FILES: dict[str, tuple[str, ...]] = {
    "advbench": ("advbench/harmful_behaviors.csv",),
    "xstest": ("xstest/xstest_prompts.csv",),
    "mt_bench": ("mt_bench/question.jsonl",),
    "vicuna_bench": ("vicuna_bench/question.jsonl",),
    "self_instruct": ("self_instruct_user_oriented/user_oriented_instructions.jsonl",),
    "gsm8k": ("gsm8k/test.jsonl",),
    "jailbreak_dan": ("advbench/harmful_behaviors.csv", "jailbreak_dan/*.json"),
    "jailbreak_dan_turns": ("advbench/harmful_behaviors.csv", "jailbreak_dan/*.json"),
    "jailbreak_wei": ("advbench/harmful_behaviors.csv", "jailbreak_wei/families.json"),
}
"""The files (globs) each evaluation dataset reads under the data folder, for the label run's data hashes."""

_LEGACY_SPLIT_KEYS = {
    "advbench": "advbench",
    "xstest": "xstest",
    "mt_bench": "mt_bench",
    "vicuna_bench": "vicuna_bench",
}


@dataclass(frozen=True)
class LabelledPrompt:
    id: str
    source: str
    harmful: bool
    messages: tuple[dict[str, Any], ...]
    part: Split | None = None
    template: str | None = None
    request: str | None = None


def parse_dataset_specs(text: str) -> list[DatasetSpec]:
    """`NAME[=LIMIT],...` as `twice eval --dataset` reads each value; `NAME:LIMIT` is accepted too."""
    specs = []
    for piece in filter(None, (part.strip() for part in text.split(","))):
        name, colon, limit = piece.rpartition(":")
        try:
            specs.append(DatasetSpec.parse(f"{name}={limit}" if colon and limit.isdigit() else piece))
        except DatasetError as error:
            raise LabelsError(str(error)) from error
    if not specs:
        raise LabelsError("no datasets given")
    return specs


def load_evaluation_prompts(
    specs: list[DatasetSpec], data_dir: Path, limit: int | None = None, seed: int = 0
) -> list[LabelledPrompt]:
    """The specs' items as prompts; a spec's limit (else `limit`) draws a seeded sample of each dataset."""
    prompts: list[LabelledPrompt] = []
    for spec in specs:
        try:
            items = load(spec, data_dir)
        except (DatasetError, OSError) as error:
            raise LabelsError(f"dataset {spec.name}: {error}") from error
        prompts += [_evaluation_prompt(item) for item in sample(items, spec.limit or limit, seed)]
    ids = [prompt.id for prompt in prompts]
    if len(set(ids)) != len(ids):
        raise LabelsError("a dataset is named twice: prompt ids are not unique")
    return prompts


def evaluation_data_hashes(specs: list[DatasetSpec], data_dir: Path) -> dict[str, str]:
    """sha256 of every file the specs read, by path (relative to the data folder when under it)."""
    hashes: dict[str, str] = {}
    for spec in specs:
        if spec.path is not None:
            hashes[str(spec.path)] = sha256_file(spec.path)
            continue
        for pattern in DATASET_FILES[spec.name]:
            for path in sorted(data_dir.glob(pattern)):
                hashes[str(path.relative_to(data_dir))] = sha256_file(path)
            if not any(data_dir.glob(pattern)):
                # jailbreak_wei's families ship with the package when the data folder lacks them.
                for path in sorted(SHIPPED_DATA_DIR.glob(pattern)):
                    hashes[f"shipped:{path.relative_to(SHIPPED_DATA_DIR)}"] = sha256_file(path)
    return dict(sorted(hashes.items()))


def legacy_part(row_id: str, source: str) -> Split | None:
    """The evaluation part of a row labelled before rows kept one, from its id, when its source allows:
    `advbench-12` and the like (`{source}-{item id}`), self-instruct's own ids, and `DATASET:ITEM_ID`."""
    if source in _LEGACY_SPLIT_KEYS and row_id.startswith(f"{source}-"):
        return part_of(f"{_LEGACY_SPLIT_KEYS[source]}:{row_id.removeprefix(source + '-')}")
    if source == "self_instruct_user_oriented":
        return part_of(f"self_instruct:{row_id}")
    dataset, colon, _ = row_id.partition(":")
    if colon and dataset == source and source in DATASET_FILES and source not in JAILBREAK_LOADERS:
        return part_of(row_id)
    return None


def row_part(row: LabelledRow) -> Split:
    """A row's evaluation part: its own, else `legacy_part` of its id, else `dev` (telemetry and unknown
    ids: nothing says they were held out)."""
    if row.part in PARTS:
        return cast(Split, row.part)
    return legacy_part(row.id, row.source) or "dev"


def _evaluation_prompt(item: Item) -> LabelledPrompt:
    template = item.meta.get("template") if item.dataset in JAILBREAK_LOADERS else None
    return LabelledPrompt(
        id=f"{item.dataset}:{item.item_id}",
        source=item.dataset,
        harmful=item.label in REFUSE_LABELS,
        messages=tuple({"role": m.role, "content": m.content} for m in item.messages),
        part=item.split,
        template=str(template) if template is not None else None,
        request=item.request,
    )


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
