"""The JSON card stored next to a model artifact: what the model is, how it was made, how well it did.

Fields the loader checks: `format`, `artifact_sha256`, `feature_config`, `classes`, `max_rounds`,
`tail_risk`. The rest (`labels`, `training_data`, `metrics`, `versions`, `training`, `created_at`) is
provenance for people.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from predictor.errors import CardMismatchError
from predictor.features import FeatureConfig

CARD_FORMAT = 2
"""2: the artifact is the model's parameters in an `.npz`; 1 was a skops file of the estimator."""


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "scikit-learn": version("scikit-learn"),
        "numpy": version("numpy"),
    }


@dataclass(frozen=True)
class ModelCard:
    max_rounds: int
    classes: tuple[int, ...]
    tail_risk: float
    feature_config: FeatureConfig
    labels: str
    artifact_file: str = ""
    artifact_sha256: str = ""
    training_data: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=library_versions)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    format: int = CARD_FORMAT

    @property
    def calibrated_floor(self) -> int:
        """The fewest rounds the tail risk and the metrics assumed (`twice predictor train --floor`)."""
        return int(self.training.get("floor", 0))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "created_at": self.created_at,
            "labels": self.labels,
            "max_rounds": self.max_rounds,
            "classes": list(self.classes),
            "tail_risk": self.tail_risk,
            "feature_config": self.feature_config.to_json(),
            "artifact": {"file": self.artifact_file, "sha256": self.artifact_sha256},
            "training_data": dict(self.training_data),
            "training": dict(self.training),
            "metrics": dict(self.metrics),
            "versions": dict(self.versions),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelCard:
        if data.get("format") != CARD_FORMAT:
            raise CardMismatchError(
                f"card format {data.get('format')!r}, this code reads {CARD_FORMAT}: retrain the artifact "
                "with `twice predictor train` (docs/predictor.md)"
            )
        try:
            return cls(
                format=CARD_FORMAT,
                created_at=str(data["created_at"]),
                labels=str(data["labels"]),
                max_rounds=int(data["max_rounds"]),
                classes=tuple(int(value) for value in data["classes"]),
                tail_risk=float(data["tail_risk"]),
                feature_config=FeatureConfig.from_json(data["feature_config"]),
                artifact_file=str(data["artifact"]["file"]),
                artifact_sha256=str(data["artifact"]["sha256"]),
                training_data=dict(data["training_data"]),
                training=dict(data["training"]),
                metrics=dict(data["metrics"]),
                versions={str(key): str(value) for key, value in data["versions"].items()},
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CardMismatchError(f"malformed model card: {error!r}") from error

    @classmethod
    def read(cls, path: Path) -> ModelCard:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise CardMismatchError(f"no model card at {path}") from error
        except json.JSONDecodeError as error:
            raise CardMismatchError(f"model card {path} is not JSON: {error}") from error
        if not isinstance(data, dict):
            raise CardMismatchError(f"model card {path} is not a JSON object")
        return cls.from_json(data)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
