"""`RoundPredictor`: how many psr reflection rounds a request gets, from a linear model over its features.

Training fits a scikit-learn `LogisticRegression` or `MultinomialNB` (both linear in the features, see
`LinearParameters`) over the round classes seen in the labels (for
dataset-derived labels, 0 and max_rounds; for psr-observed labels, every first-firing round). A request gets
the smallest round count r whose predicted risk of needing more, P(label > r), is at most the card's
`tail_risk`. Classification with this tail rule, rather than a regression on rounds, makes the costly
error (a harmful prompt given fewer rounds than it needs) the one the threshold controls.

The artifact is the fitted model's parameters (classes, coefficients, intercepts) in a numpy `.npz`,
read with `allow_pickle=False` after its sha256 and its card have been checked. Serving computes the linear
scores itself: scikit-learn's `predict_proba` spends about 100 µs validating one row, and importing
scikit-learn (with scipy and a serialiser) to hold three arrays cost the gateway about 100 MB of memory.
This module therefore imports numpy only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from predictor.card import ModelCard
from predictor.errors import (
    ArtifactTamperedError,
    CardMismatchError,
    IncompatibleFeaturesError,
    UntrustedArtifactError,
)
from predictor.features import FeatureVector, Messages, extract

if TYPE_CHECKING:
    import scipy.sparse as sp

ARTIFACT_FILE = "round_predictor.npz"
CARD_FILE = "round_predictor.card.json"
DEFAULT_ARTIFACT_DIR = Path(__file__).parent / "artifacts"
PARAMETER_NAMES = ("classes", "coef", "intercept")
# A fixed timestamp makes the same parameters the same file, so a retrain can be compared by sha256.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclasses.dataclass(frozen=True, eq=False)
class LinearParameters:
    """What a fitted linear classifier computes with: P(class) is the softmax of `X @ coef.T + intercept`
    (for two classes, the sigmoid of the single row's score)."""

    classes: npt.NDArray[np.int64]
    coef: npt.NDArray[np.float64]
    """One row per class, or a single row for two classes (scores of the second class)."""
    intercept: npt.NDArray[np.float64]

    @classmethod
    def of(cls, estimator: Any) -> LinearParameters:
        """The parameters of a fitted scikit-learn linear classifier (`classes_`, `coef_`, `intercept_`)."""
        return cls(
            classes=np.asarray(estimator.classes_, dtype=np.int64),
            coef=np.asarray(estimator.coef_, dtype=np.float64),
            intercept=np.asarray(estimator.intercept_, dtype=np.float64),
        )

    @classmethod
    def of_naive_bayes(cls, estimator: Any) -> LinearParameters:
        """The parameters of a fitted scikit-learn `MultinomialNB`: its joint log-likelihood
        `X @ feature_log_prob_.T + class_log_prior_` is linear and `predict_proba` is its softmax. For two
        classes the single row is the second class's minus the first's, so the sigmoid gives the same."""
        coef = np.asarray(estimator.feature_log_prob_, dtype=np.float64)
        intercept = np.asarray(estimator.class_log_prior_, dtype=np.float64)
        if coef.shape[0] == 2:
            coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
        return cls(classes=np.asarray(estimator.classes_, dtype=np.int64), coef=coef, intercept=intercept)

    def sha256(self) -> str:
        """A digest of what the model computes (classes, coefficients, intercepts as little-endian
        float64), independent of the file that holds them."""
        digest = hashlib.sha256()
        for array in (self.classes, self.coef, self.intercept):
            digest.update(np.ascontiguousarray(array, dtype="<f8").tobytes())
        return digest.hexdigest()

    def to_bytes(self) -> bytes:
        """An `.npz` file (as `numpy.load` reads it), byte for byte the same for the same parameters."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for name in PARAMETER_NAMES:
                member = io.BytesIO()
                np.lib.format.write_array(member, getattr(self, name), allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{name}.npy", _ZIP_TIME), member.getvalue())
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: object) -> LinearParameters:
        """Parse an `.npz` written by `to_bytes`; object arrays (pickles) are never loaded."""
        if not zipfile.is_zipfile(io.BytesIO(data)):  # numpy would take any other bytes for a pickle
            raise CardMismatchError(f"{source} is not a parameters file (an .npz archive)")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                names = sorted(archive.files)
                arrays = {name: archive[name] for name in names}
        except ValueError as error:  # numpy refuses an object array when pickles are not allowed
            raise UntrustedArtifactError(f"{source}: {error}; refusing to load") from error
        except (OSError, zipfile.BadZipFile, EOFError) as error:
            raise CardMismatchError(f"{source} is not a parameters file: {error}") from error
        if names != sorted(PARAMETER_NAMES):
            raise CardMismatchError(f"{source} holds {names}, not {list(PARAMETER_NAMES)}")
        for name, array in arrays.items():
            if array.dtype.kind not in ("iu" if name == "classes" else "iuf"):
                raise UntrustedArtifactError(f"{source}: {name} has dtype {array.dtype}; refusing to load")
        return cls(
            classes=arrays["classes"].astype(np.int64),
            coef=arrays["coef"].astype(np.float64),
            intercept=arrays["intercept"].astype(np.float64),
        )


class RoundPredictor:
    """Predicts reflection rounds in `[floor, min(ceiling, max_rounds)]` for a conversation. `floor` None is
    the floor the tail risk was calibrated with (the card's `training.floor`, 0 on older cards), held under
    the ceiling."""

    def __init__(
        self,
        parameters: LinearParameters,
        card: ModelCard,
        *,
        floor: int | None = None,
        ceiling: int | None = None,
        tail_risk: float | None = None,
    ) -> None:
        _check_consistent(parameters, card)
        upper = card.max_rounds if ceiling is None else min(ceiling, card.max_rounds)
        if floor is None:
            floor = min(card.calibrated_floor, upper)
        if not 0 <= floor <= upper:
            raise ValueError(f"need 0 <= floor <= ceiling <= max_rounds, got {floor}, {upper}")
        if tail_risk is not None and not 0.0 <= tail_risk < 1.0:
            raise ValueError(f"tail_risk {tail_risk} is not in [0, 1)")
        self.parameters = parameters
        # A request reads a few hundred features' coefficients for every class. A feature per row, whatever
        # order the file or scikit-learn left `coef` in, makes that one contiguous `take` per feature: a
        # third to a half of the time fancy indexing of `coef`'s columns takes.
        self._coef_by_feature = np.ascontiguousarray(parameters.coef.T)
        self.card = card
        self.floor = floor
        self.ceiling = upper
        self._tail_risk = tail_risk

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
        n_features = self._coef_by_feature.shape[0]
        if vector.n_features != n_features:
            raise ValueError(f"a vector of {vector.n_features} features, the model takes {n_features}")
        coefficients = self._coef_by_feature.take(vector.indices, axis=0)
        scores = vector.values @ coefficients + self.parameters.intercept
        return int(self._decide(self._probabilities(scores[np.newaxis, :]))[0])

    def rounds_for_matrix(self, features: sp.csr_matrix) -> npt.NDArray[np.int64]:
        """Rounds for every row of a feature matrix (training and evaluation)."""
        return self._decide(self.probabilities(features))

    def probabilities(self, features: sp.csr_matrix) -> npt.NDArray[np.float64]:
        """P(label = class) per row, columns in `classes` order."""
        scores = np.asarray(features @ self.parameters.coef.T) + self.parameters.intercept
        return self._probabilities(scores)

    def _probabilities(self, scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self.parameters.classes.size == 2:
            positive = 1.0 / (1.0 + np.exp(-scores[:, 0]))
            return np.column_stack([1.0 - positive, positive])
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities: npt.NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities

    def _decide(self, probabilities: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        rounds = decide_rounds(probabilities, self.parameters.classes, self.tail_risk)
        return np.clip(rounds, self.floor, self.ceiling)

    def save(self, directory: Path) -> ModelCard:
        """Write the artifact and its card (with the artifact's sha256) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        data = self.parameters.to_bytes()
        (directory / ARTIFACT_FILE).write_bytes(data)
        card = dataclasses.replace(
            self.card, artifact_file=ARTIFACT_FILE, artifact_sha256=hashlib.sha256(data).hexdigest()
        )
        card.write(directory / CARD_FILE)
        self.card = card
        return card

    @classmethod
    def load(
        cls,
        directory: Path,
        *,
        floor: int | None = None,
        ceiling: int | None = None,
        tail_risk: float | None = None,
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
        parameters = LinearParameters.from_bytes(data, artifact)
        return cls(parameters, card, floor=floor, ceiling=ceiling, tail_risk=tail_risk)

    @classmethod
    def default(
        cls, *, floor: int | None = None, ceiling: int | None = None, tail_risk: float | None = None
    ) -> RoundPredictor:
        """The artifact shipped in the package (see docs/predictor.md for how it was made)."""
        return cls.load(DEFAULT_ARTIFACT_DIR, floor=floor, ceiling=ceiling, tail_risk=tail_risk)


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


def _check_consistent(parameters: LinearParameters, card: ModelCard) -> None:
    classes = tuple(int(value) for value in parameters.classes)
    if classes != card.classes:
        raise CardMismatchError(f"the card lists classes {list(card.classes)}, the model has {list(classes)}")
    if len(classes) < 2 or list(classes) != sorted(set(classes)):
        raise CardMismatchError(f"model classes {list(classes)} are not at least two, ascending")
    if classes[0] < 0 or classes[-1] > card.max_rounds:
        raise CardMismatchError(f"model classes {list(classes)} fall outside [0, {card.max_rounds}]")
    rows = 1 if len(classes) == 2 else len(classes)
    n_features = card.feature_config.n_features
    if parameters.coef.ndim != 2 or parameters.coef.shape[1] != n_features:
        raise CardMismatchError(
            f"the model takes {parameters.coef.shape[-1]} features, the card's configuration makes "
            f"{n_features}"
        )
    if parameters.coef.shape[0] != rows or parameters.intercept.shape != (rows,):
        raise CardMismatchError(
            f"{len(classes)} classes need {rows} coefficient rows and intercepts, the model has "
            f"{parameters.coef.shape[0]} and {parameters.intercept.shape}"
        )
    if not (np.isfinite(parameters.coef).all() and np.isfinite(parameters.intercept).all()):
        raise CardMismatchError("the model's coefficients are not all finite")
    if not 0.0 <= card.tail_risk < 1.0:
        raise CardMismatchError(f"tail_risk {card.tail_risk} is not in [0, 1)")
