"""Predictor test fixtures: real labelled prompts from the shared data folder, a small trained model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from predictor.datasets import DEFAULT_DATA_DIR, SOURCE_FILES, load_prompts
from predictor.gateway_labels import dataset_row
from predictor.labels import LabelledRow, write_labels
from predictor.model import RoundPredictor
from predictor.train import TrainOptions, train

SMALL_OPTIONS = TrainOptions(max_rounds=8, seed=1, test_size=0.3, folds=3)


def small_data_dir(target: Path, rows_per_file: int) -> Path:
    """A data folder with the same files as the shared one, cut to their first lines (header kept)."""
    for name in [*SOURCE_FILES.values(), "gsm8k/test.jsonl"]:
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        lines = (DEFAULT_DATA_DIR / name).read_text(encoding="utf-8").splitlines(keepends=True)
        keep = rows_per_file + 1 if name.endswith(".csv") else rows_per_file
        destination.write_text("".join(lines[:keep]), encoding="utf-8")
    shutil.copytree(DEFAULT_DATA_DIR / "jailbreak_dan", target / "jailbreak_dan")
    return target


@pytest.fixture(scope="session")
def small_rows() -> list[LabelledRow]:
    """Dataset-derived rows: 60 prompts per source and label, from the real files."""
    return [dataset_row(prompt, 8) for prompt in load_prompts(DEFAULT_DATA_DIR, limit_per_source=60)]


@pytest.fixture(scope="session")
def small_labels_file(tmp_path_factory: pytest.TempPathFactory, small_rows: list[LabelledRow]) -> Path:
    path = tmp_path_factory.mktemp("labels") / "labels.jsonl"
    write_labels(path, small_rows)
    return path


@pytest.fixture(scope="session")
def trained(small_rows: list[LabelledRow]) -> RoundPredictor:
    return train(small_rows, SMALL_OPTIONS)


@pytest.fixture(scope="session")
def saved_dir(tmp_path_factory: pytest.TempPathFactory, trained: RoundPredictor) -> Path:
    directory = tmp_path_factory.mktemp("artifact")
    trained.save(directory)
    return directory


@pytest.fixture
def artifact_copy(tmp_path: Path, saved_dir: Path) -> Path:
    """A private copy of the saved artifact that a test may tamper with."""
    return Path(shutil.copytree(saved_dir, tmp_path / "artifact"))
