"""The named evaluation sets `twice eval --dataset` knows, and how a `--dataset` value is read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from evaluation.datasets import (
    DatasetError,
    Item,
    load_advbench,
    load_gsm8k,
    load_jsonl,
    load_mt_bench,
    load_self_instruct,
    load_vicuna_bench,
    load_xstest,
    load_xstest_safe,
)
from evaluation.jailbreaks import JAILBREAK_LOADERS

LOADERS: Final[dict[str, Callable[[Path], list[Item]]]] = {
    "advbench": load_advbench,
    "xstest": load_xstest,
    "xstest_safe": load_xstest_safe,
    "mt_bench": load_mt_bench,
    "vicuna_bench": load_vicuna_bench,
    "self_instruct": load_self_instruct,
    "gsm8k": load_gsm8k,
    **JAILBREAK_LOADERS,
}


@dataclass(frozen=True)
class DatasetSpec:
    """One `--dataset` value: a set name or a `.jsonl` path, with an optional item limit (`NAME=30`)."""

    name: str
    path: Path | None = None
    limit: int | None = None

    @classmethod
    def parse(cls, text: str) -> DatasetSpec:
        source, _, limit_text = text.rpartition("=") if "=" in text else (text, "", "")
        if limit_text and not limit_text.isdigit():
            raise DatasetError(f"dataset {text!r}: the part after '=' must be an item count")
        limit = int(limit_text) if limit_text else None
        if source.endswith(".jsonl"):
            path = Path(source)
            return cls(path.stem, path, limit)
        if source not in LOADERS:
            raise DatasetError(f"unknown dataset {source!r}; known: {', '.join(LOADERS)} or a .jsonl path")
        return cls(source, None, limit)


def load(spec: DatasetSpec, data_dir: Path) -> list[Item]:
    if spec.path is not None:
        return load_jsonl(spec.path, spec.name)
    try:
        return LOADERS[spec.name](data_dir)
    except FileNotFoundError as error:
        raise DatasetError(f"{spec.name}: {error.filename} not found (see --data-dir)") from error
