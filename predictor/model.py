"""`RoundPredictor`: how many psr reflection rounds a request gets, from a linear model over its features.

The artifact is a scikit-learn `LogisticRegression` over the round classes seen in the labels (for
dataset-derived labels, 0 and max_rounds; for psr-observed labels, every first-firing round). A request gets
the smallest round count r whose predicted risk of needing more, P(label > r), is at most the card's
`tail_risk`. Classification with this tail rule, rather than a regression on rounds, makes the costly
error (a harmful prompt given fewer rounds than it needs) the one the threshold controls.

The artifact is stored with skops (no pickle) and loaded with an explicit trusted-type list, after its
sha256 and its card have been checked. Serving computes the linear scores itself from the model's
coefficients: scikit-learn's `predict_proba` spends about 100 µs validating one row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from predictor.card import ModelCard, library_versions
from predictor.errors import (
    ArtifactTamperedError,
    CardMismatchError,
    IncompatibleFeaturesError,
    UntrustedArtifactError,
)
from predictor.features import FeatureVector, Messages, extract

ARTIFACT_FILE = "round_predictor.skops"
CARD_FILE = "round_predictor.card.json"
DEFAULT_ARTIFACT_DIR = Path(__file__).parent / "artifacts"
TRUSTED_TYPES = ["sklearn.linear_model._logistic.LogisticRegression"]

logger = logging.getLogger(__name__)


class RoundPredictor:
    """Predicts reflection rounds in `[floor, min(ceiling, max_rounds)]` for a conversation."""

    def __init__(
        self,
        model: Any,
        card: ModelCard,
        *,
        floor: int = 0,
        ceiling: int | None = None,
        tail_risk: float | None = None,
    ) -> None:
        _check_consistent(model, card)
        upper = card.max_rounds if ceiling is None else min(ceiling, card.max_rounds)
        if not 0 <= floor <= upper:
            raise ValueError(f"need 0 <= floor <= ceiling <= max_rounds, got {floor}, {upper}")
        if tail_risk is not None and not 0.0 <= tail_risk < 1.0:
            raise ValueError(f"tail_risk {tail_risk} is not in [0, 1)")
        self.model = model
        self.card = card
        self.floor = floor
        self.ceiling = upper
        self._tail_risk = tail_risk
        self._classes = np.asarray(model.classes_, dtype=np.int64)
        self._coef: npt.NDArray[np.float64] = np.asarray(model.coef_, dtype=np.float64)
        self._intercept: npt.NDArray[np.float64] = np.asarray(model.intercept_, dtype=np.float64)

    @property
    def max_rounds(self) -> int:
        return self.card.max_rounds

    @property
    def tail_risk(self) -> float:
        """The operator's override, else the card's calibrated value (the card's `frontier` shows both
        sides of the trade at each value)."""
        return self.card.tail_risk if self._tail_risk is None else self._tail_risk

    def predict_rounds(self, messages: Messages) -> int:
        return self.rounds_for(extract(messages, self.card.feature_config))

    def rounds_for(self, vector: FeatureVector) -> int:
        if vector.n_features != self._coef.shape[1]:
            raise ValueError(
                f"a vector of {vector.n_features} features, the model takes {self._coef.shape[1]}"
            )
        scores = self._coef[:, vector.indices] @ vector.values + self._intercept
        return int(self._decide(self._probabilities(scores[np.newaxis, :]))[0])

    def rounds_for_matrix(self, features: sp.csr_matrix) -> npt.NDArray[np.int64]:
        """Rounds for every row of a feature matrix (training and evaluation)."""
        return self._decide(self.probabilities(features))

    def probabilities(self, features: sp.csr_matrix) -> npt.NDArray[np.float64]:
        """P(label = class) per row, columns in `model.classes_` order."""
        scores = np.asarray(features @ self._coef.T) + self._intercept
        return self._probabilities(scores)

    def _probabilities(self, scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self._classes.size == 2:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.column_stack([1.0 - positive, positive])
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities: npt.NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities

    def _decide(self, probabilities: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        rounds = decide_rounds(probabilities, self._classes, self.tail_risk)
        return np.clip(rounds, self.floor, self.ceiling)

    def save(self, directory: Path) -> ModelCard:
        """Write the artifact and its card (with the artifact's sha256) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        data = sio.dumps(self.model)
        (directory / ARTIFACT_FILE).write_bytes(data)
        card = dataclasses.replace(
            self.card, artifact_file=ARTIFACT_FILE, artifact_sha256=hashlib.sha256(data).hexdigest()
        )
        card.write(directory / CARD_FILE)
        self.card = card
        return card

    @classmethod
    def load(
        cls, directory: Path, *, floor: int = 0, ceiling: int | None = None, tail_risk: float | None = None
    ) -> RoundPredictor:
        """Load an artifact after checking its card; raises an `ArtifactError` subclass when refused."""
        card = ModelCard.read(directory / CARD_FILE)
        problem = card.feature_config.incompatibility()
        if problem is not None:
            raise IncompatibleFeaturesError(f"{directory / CARD_FILE}: {problem}")
        artifact = directory / (card.artifact_file or ARTIFACT_FILE)
        try:
            data = artifact.read_bytes()
        except FileNotFoundError as error:
            raise CardMismatchError(f"the card names {artifact}, which does not exist") from error
        digest = hashlib.sha256(data).hexdigest()
        if digest != card.artifact_sha256:
            raise ArtifactTamperedError(
                f"{artifact} has sha256 {digest}, its card records {card.artifact_sha256}; refusing to load"
            )
        untrusted = sorted(set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES))
        if untrusted:
            raise UntrustedArtifactError(f"{artifact} holds untrusted types {untrusted}; refusing to load")
        model = sio.loads(data, trusted=TRUSTED_TYPES)
        _warn_on_version_drift(card)
        return cls(model, card, floor=floor, ceiling=ceiling, tail_risk=tail_risk)

    @classmethod
    def default(
        cls, *, floor: int = 0, ceiling: int | None = None, tail_risk: float | None = None
    ) -> RoundPredictor:
        """The artifact shipped in the package (see docs/predictor.md for how it was made)."""
        return cls.load(DEFAULT_ARTIFACT_DIR, floor=floor, ceiling=ceiling, tail_risk=tail_risk)


def parameters_sha256(model: LogisticRegression) -> str:
    """A digest of what the model computes (classes, coefficients, intercepts as little-endian float64).
    The artifact file's own sha256 differs between two runs that fit the same model, because skops names
    its arrays by object id; this one does not, so a retrained artifact can be compared with the shipped
    one."""
    digest = hashlib.sha256()
    for array in (model.classes_, model.coef_, model.intercept_):
        digest.update(np.ascontiguousarray(array, dtype="<f8").tobytes())
    return digest.hexdigest()


def decide_rounds(
    probabilities: npt.NDArray[np.float64], classes: npt.NDArray[np.int64], tail_risk: float
) -> npt.NDArray[np.int64]:
    """Per row, the smallest class r with P(label > r) <= tail_risk (classes sorted ascending)."""
    tail = 1.0 - np.cumsum(probabilities, axis=1)
    # The last class always qualifies (its tail is 0 up to rounding), so argmax finds a real match.
    tail[:, -1] = 0.0
    first_within = np.argmax(tail <= tail_risk, axis=1)
    chosen: npt.NDArray[np.int64] = classes[first_within]
    return chosen


def _check_consistent(model: Any, card: ModelCard) -> None:
    if not isinstance(model, LogisticRegression):
        raise CardMismatchError(f"expected a LogisticRegression, the artifact holds {type(model).__name__}")
    classes = tuple(int(value) for value in model.classes_)
    if classes != card.classes:
        raise CardMismatchError(f"the card lists classes {list(card.classes)}, the model has {list(classes)}")
    if classes[0] < 0 or classes[-1] > card.max_rounds:
        raise CardMismatchError(f"model classes {list(classes)} fall outside [0, {card.max_rounds}]")
    if model.n_features_in_ != card.feature_config.n_features:
        raise CardMismatchError(
            f"the model takes {model.n_features_in_} features, the card's configuration makes "
            f"{card.feature_config.n_features}"
        )
    if not 0.0 <= card.tail_risk < 1.0:
        raise CardMismatchError(f"tail_risk {card.tail_risk} is not in [0, 1)")


def _warn_on_version_drift(card: ModelCard) -> None:
    current = library_versions()
    for library in ("scikit-learn", "skops", "numpy"):
        if card.versions.get(library) != current[library]:
            logger.warning(
                "round predictor was saved with %s %s, running %s",
                library,
                card.versions.get(library),
                current[library],
            )
