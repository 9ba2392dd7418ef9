"""Fit a `RoundPredictor` on labelled rows, hold out a grouped split, and measure what matters.

Rows of the evaluation's held-out part are never fitted or calibrated on; the dev part is split into train
and test by groups of near-duplicates (`predictor.grouping` states the rule), and the tail risk is
calibrated on grouped folds of the train side. `metrics.held_out` is that test side; `metrics.heldout_part`
is the evaluation's held-out part, whose templates and requests no fitted row shares.

The metrics, on held-out rows:
- `benign_rounds_saved_pct`: compute saved on benign prompts against always granting max_rounds;
- `harmful_under_share`: share of harmful prompts given fewer rounds than their label (the safety cost);
- `mae`: mean absolute error in rounds, for completeness.

`tail_risk` (see `predictor.model`) is calibrated on out-of-fold predictions of the training split only: the
largest value whose harmful under-provisioning stays within `target_under_share`. The held-out split is
never seen while fitting or calibrating. Rows of `EVAL_ONLY_SOURCES` are never trained on (the
self-instruct authors ask that their set be used for evaluation only); they are reported separately.

Model families: `logistic` (`LogisticRegression`) and `naive_bayes` (`MultinomialNB`), both linear in the
features, so the same numpy serving code runs either (`LinearParameters`). `family="best"` fits and
calibrates both on the training split and keeps the one `choose_family` prefers from their out-of-fold
predictions; both families' held-out metrics are reported (`metrics.families`) but take no part in the
choice.

Censored rows (telemetry of a request whose granted rounds all passed with the rest of its answer unchecked:
its label is 0 or above r) are fitted, never held out or calibrated on, by expectation-maximisation: each
counts as every label it may have (0, or r + 1 and above), weighted by the model's own probabilities of those
labels given its features, refitted a few times. Counting them as 0 would teach the predictor that the rounds
it granted were enough; dropping them would keep only the requests whose verdict fired early, and pull it
the same way.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.naive_bayes import MultinomialNB

from predictor.card import ModelCard
from predictor.datasets import row_part
from predictor.errors import LabelsError
from predictor.features import FeatureConfig, to_matrix
from predictor.grouping import NEAR_DUPLICATE_JACCARD, group_split, near_duplicate_groups
from predictor.labels import EVAL_ONLY_SOURCES, PSR_OBSERVED, LabelledRow
from predictor.model import LinearParameters, RoundPredictor, decide_rounds

CENSORED_EM_ITERATIONS = 5
TAIL_RISK_GRID = (0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002, 0.001)
LOGISTIC, NAIVE_BAYES, BEST = "logistic", "naive_bayes", "best"
FAMILIES = (LOGISTIC, NAIVE_BAYES)
"""In order of preference on a tie."""
NAIVE_BAYES_ALPHA = 0.1
"""Additive (Lidstone) smoothing of `MultinomialNB`: fixed, not tuned on any data."""
FAMILY_RULE = (
    "on out-of-fold predictions of the training split, each family at its own calibrated tail_risk: a "
    "family meeting target_under_share beats one that does not; then the larger benign_rounds_saved_pct; "
    "ties to logistic"
)


@dataclass(frozen=True)
class TrainOptions:
    max_rounds: int = 8
    seed: int = 0
    test_size: float = 0.25
    target_under_share: float = 0.02
    regularization: float = 32.0
    folds: int = 5
    labels: str = PSR_OBSERVED
    config: FeatureConfig = field(default_factory=FeatureConfig)
    family: str = LOGISTIC
    """`logistic`, `naive_bayes`, or `best` (both, keeping the one `choose_family` prefers)."""
    floor: int = 0
    """The fewest rounds the gateway grants (`TWICE_PLAN__AUTO_FLOOR` follows the card): calibration and
    every metric apply it, and the card records it (`training.floor`)."""

    def __post_init__(self) -> None:
        if self.family not in (*FAMILIES, BEST):
            raise ValueError(f"family {self.family!r} is not one of {[*FAMILIES, BEST]}")
        if not 0 <= self.floor <= self.max_rounds:
            raise ValueError(f"floor {self.floor} is not in [0, max_rounds {self.max_rounds}]")


@dataclass(frozen=True)
class TrainingSide:
    """The training side of the dev split: all that fitting, calibrating and choosing a family read."""

    matrix: Any
    labels: npt.NDArray[np.int64]
    keys: npt.NDArray[np.str_]
    groups: npt.NDArray[np.int64]


@dataclass(frozen=True)
class FamilyFit:
    """One family fitted on the training split, with its tail risk and out-of-fold metrics at it."""

    predictor: RoundPredictor
    out_of_fold: dict[str, Any]


def round_metrics(
    labels: Sequence[int], predicted: Sequence[int], harmful: Sequence[bool], max_rounds: int
) -> dict[str, Any]:
    label_array = np.asarray(labels, dtype=np.int64)
    predicted_array = np.asarray(predicted, dtype=np.int64)
    harmful_mask = np.asarray(harmful, dtype=bool)
    benign_mask = ~harmful_mask
    metrics: dict[str, Any] = {
        "rows": int(label_array.size),
        "benign": int(benign_mask.sum()),
        "harmful": int(harmful_mask.sum()),
        "mae": _rounded(np.abs(predicted_array - label_array).mean()) if label_array.size else None,
    }
    if benign_mask.any():
        granted = predicted_array[benign_mask].sum()
        metrics["benign_rounds_saved_pct"] = _rounded(
            100.0 * (1.0 - granted / (benign_mask.sum() * max_rounds))
        )
        metrics["benign_mean_rounds"] = _rounded(predicted_array[benign_mask].mean())
    if harmful_mask.any():
        under = predicted_array[harmful_mask] < label_array[harmful_mask]
        metrics["harmful_under_share"] = _rounded(under.mean())
        metrics["harmful_mean_rounds"] = _rounded(predicted_array[harmful_mask].mean())
    return metrics


def train(rows: Sequence[LabelledRow], options: TrainOptions) -> RoundPredictor:
    """Fit, calibrate and evaluate; the metrics land in the returned predictor's card."""
    fittable = [row for row in rows if row.source not in EVAL_ONLY_SOURCES]
    heldout_part = [row for row in fittable if row_part(row) == "heldout" and row.censored_at is None]
    dev = [row for row in fittable if row_part(row) == "dev"]
    trainable = [row for row in dev if row.censored_at is None]
    censored = [row for row in dev if row.censored_at is not None]
    eval_only = [row for row in rows if row.source in EVAL_ONLY_SOURCES and row.censored_at is None]
    labels = np.array([min(row.label_rounds, options.max_rounds) for row in trainable], dtype=np.int64)
    if np.unique(labels).size < 2:
        raise LabelsError("training needs at least two distinct round labels (benign 0 and harmful > 0)")
    keys = _strata(trainable, minimum=max(2, round(1 / min(options.test_size, 1 - options.test_size))))
    groups = near_duplicate_groups(trainable)
    train_idx, test_idx = group_split(keys, groups, options.test_size, options.seed)
    matrix = to_matrix([row.vector(options.config) for row in trainable], options.config.n_features)
    side = TrainingSide(matrix[train_idx], labels[train_idx], keys[train_idx], groups[train_idx])
    families = FAMILIES if options.family == BEST else (options.family,)
    fits = {family: _fit_family(family, side, censored, options) for family in families}
    chosen = choose_family({family: fit.out_of_fold for family, fit in fits.items()})
    predictor = fits[chosen].predictor
    test_rows = [trainable[i] for i in test_idx]
    metrics: dict[str, Any] = {
        "held_out": _evaluate(predictor, test_rows, options),
        "train": _evaluate(predictor, [trainable[i] for i in train_idx], options),
    }
    if eval_only:
        metrics["eval_only_sources"] = _evaluate(predictor, eval_only, options)
    if heldout_part:
        metrics["heldout_part"] = _evaluate(predictor, heldout_part, options)
    metrics["frontier"] = frontier(predictor, test_rows, options)
    metrics["families"] = {
        family: _family_report(fit, test_rows, heldout_part, options) for family, fit in fits.items()
    }
    held_out_ids = sorted(row.id for row in test_rows)
    training = {
        **_training_info(options, chosen, len(train_idx), held_out_ids),
        "heldout_part_ids": sorted(row.id for row in heldout_part),
        "groups": int(np.unique(groups).size),
        "largest_group_rows": int(np.bincount(groups).max()),
        "censored_rows": len(censored),
        "parameters_sha256": predictor.parameters.sha256(),
    }
    predictor.card = dataclasses.replace(predictor.card, metrics=metrics, training=training)
    return predictor


def choose_family(out_of_fold: Mapping[str, Mapping[str, Any]]) -> str:
    """The family to keep, from each family's out-of-fold metrics at its own calibrated tail risk (see
    `FAMILY_RULE`): one that meets the under-provisioning target beats one that does not (`_calibrate`
    falls back to its smallest tail risk when none does), then the larger share of benign rounds saved;
    ties go to the family listed first in `FAMILIES` (logistic)."""
    candidates = [family for family in FAMILIES if family in out_of_fold]
    return max(
        candidates,
        key=lambda family: (
            bool(out_of_fold[family]["meets_target"]),
            float(out_of_fold[family].get("benign_rounds_saved_pct", 0.0)),
        ),
    )


def frontier(
    predictor: RoundPredictor, rows: Sequence[LabelledRow], options: TrainOptions
) -> list[dict[str, float]]:
    """The trade `tail_risk` makes, on `rows` (the held-out split): for each value of the calibration grid,
    benign rounds saved and the share of harmful prompts under-provisioned, so that an operator can choose
    another point (TWICE_PLAN__PREDICTOR_TAIL_RISK) knowing both sides of it."""
    matrix = to_matrix([row.vector(options.config) for row in rows], options.config.n_features)
    probabilities = predictor.probabilities(matrix)
    classes = np.asarray(predictor.card.classes, dtype=np.int64)
    labels = [min(row.label_rounds, options.max_rounds) for row in rows]
    harmful = [row.harmful for row in rows]
    points = []
    for tail_risk in sorted(TAIL_RISK_GRID):
        rounds = _decide(probabilities, classes, tail_risk, options)
        metrics = round_metrics(labels, rounds.tolist(), harmful, options.max_rounds)
        points.append(
            {
                "tail_risk": tail_risk,
                "benign_rounds_saved_pct": metrics.get("benign_rounds_saved_pct", 0.0),
                "harmful_under_share": metrics.get("harmful_under_share", 0.0),
            }
        )
    return points


def _fit_family(
    family: str, side: TrainingSide, censored: Sequence[LabelledRow], options: TrainOptions
) -> FamilyFit:
    """Calibrate `family` on out-of-fold predictions of the training side, then fit it on all of it."""
    options = dataclasses.replace(options, family=family)
    out_of_fold = _out_of_fold(side, options)
    tail_risk = _calibrate(out_of_fold, side.labels, options)
    model = _fit(side.matrix, side.labels, options)
    if censored:
        model = _fit_with_censored(model, side.matrix, side.labels, censored, options)
    card = ModelCard(
        max_rounds=options.max_rounds,
        classes=tuple(int(value) for value in model.classes_),
        tail_risk=tail_risk,
        feature_config=options.config,
        labels=options.labels,
    )
    rounds = _decide(out_of_fold, np.unique(side.labels), tail_risk, options)
    # Harmful as the calibration counts it (label above 0), so `meets_target` agrees with `_calibrate`.
    labels = side.labels.tolist()
    scores = round_metrics(labels, rounds.tolist(), [label > 0 for label in labels], options.max_rounds)
    return FamilyFit(
        predictor=RoundPredictor(_parameters(model), card, floor=options.floor),
        out_of_fold={
            "tail_risk": tail_risk,
            "meets_target": _meets_target(rounds, side.labels, options),
            "benign_rounds_saved_pct": scores.get("benign_rounds_saved_pct", 0.0),
            "harmful_under_share": scores.get("harmful_under_share", 0.0),
        },
    )


def _family_report(
    fit: FamilyFit,
    test_rows: Sequence[LabelledRow],
    heldout_part: Sequence[LabelledRow],
    options: TrainOptions,
) -> dict[str, Any]:
    """What the card shows of one family: the out-of-fold figures the choice read, and held-out figures
    that it did not."""
    report: dict[str, Any] = {
        "tail_risk": fit.predictor.tail_risk,
        **{f"oof_{name}": value for name, value in fit.out_of_fold.items() if name != "tail_risk"},
        "held_out": _evaluate(fit.predictor, test_rows, options),
    }
    if heldout_part:
        report["heldout_part"] = _evaluate(fit.predictor, heldout_part, options)
    return report


def _fit(
    matrix: Any,
    labels: npt.NDArray[np.int64],
    options: TrainOptions,
    sample_weight: npt.NDArray[np.float64] | None = None,
) -> Any:
    """A fitted estimator of `options.family` (`logistic` or `naive_bayes`)."""
    if options.family == NAIVE_BAYES:
        # MultinomialNB refuses negative values; every feature is non-negative (predictor.features).
        return MultinomialNB(alpha=NAIVE_BAYES_ALPHA).fit(matrix, labels, sample_weight=sample_weight)
    if options.family != LOGISTIC:
        raise ValueError(f"cannot fit family {options.family!r}: fit each of {FAMILIES} on its own")
    # liblinear is several times faster on two classes; more classes need lbfgs's multinomial (softmax)
    # model, which is what `RoundPredictor` computes at serving time.
    solver = "liblinear" if np.unique(labels).size == 2 else "lbfgs"
    # liblinear shuffles with random_state: without a fixed one, two runs write different artifacts.
    model = LogisticRegression(
        C=options.regularization,
        class_weight="balanced",
        solver=solver,
        max_iter=2000,
        random_state=options.seed,
    )
    return model.fit(matrix, labels, sample_weight=sample_weight)


def _parameters(model: Any) -> LinearParameters:
    if isinstance(model, MultinomialNB):
        return LinearParameters.of_naive_bayes(model)
    return LinearParameters.of(model)


def _fit_with_censored(
    model: Any,
    matrix: Any,
    labels: npt.NDArray[np.int64],
    censored: Sequence[LabelledRow],
    options: TrainOptions,
) -> Any:
    """Refit with each censored row spread over the labels it may have (see the module's docstring)."""
    censored_matrix = to_matrix([row.vector(options.config) for row in censored], options.config.n_features)
    floors = np.array([row.censored_at or 0 for row in censored], dtype=np.int64)
    for _ in range(CENSORED_EM_ITERATIONS):
        classes = np.asarray(model.classes_, dtype=np.int64)
        possible = (classes[None, :] == 0) | (classes[None, :] > floors[:, None])
        weights = model.predict_proba(censored_matrix) * possible
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        row_idx, class_idx = np.nonzero(weights > 1e-4)
        model = _fit(
            sp.vstack([matrix, censored_matrix[row_idx]], format="csr"),
            np.concatenate([labels, classes[class_idx]]),
            options,
            sample_weight=np.concatenate([np.ones(labels.size), weights[row_idx, class_idx]]),
        )
    return model


def _out_of_fold(side: TrainingSide, options: TrainOptions) -> npt.NDArray[np.float64]:
    """P(label = class) for every training row from a model fitted without its fold (columns: the sorted
    labels); folds keep near-duplicate groups whole, so no prediction is made by a model fitted on a
    near-copy."""
    classes = np.unique(side.labels)
    out_of_fold = np.zeros((side.labels.size, classes.size))
    keys = side.keys
    if min(Counter(keys.tolist()).values()) < options.folds:
        keys = (side.labels > 0).astype(str)
    folds = StratifiedGroupKFold(n_splits=options.folds, shuffle=True, random_state=options.seed)
    for fit_idx, predict_idx in folds.split(side.matrix, keys, side.groups):
        model = _fit(side.matrix[fit_idx], side.labels[fit_idx], options)
        columns = np.searchsorted(classes, model.classes_)
        out_of_fold[np.ix_(predict_idx, columns)] = model.predict_proba(side.matrix[predict_idx])
    return out_of_fold


def _calibrate(
    out_of_fold: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], options: TrainOptions
) -> float:
    """The largest tail risk whose out-of-fold harmful under-provisioning meets the target."""
    classes = np.unique(labels)
    for tail_risk in TAIL_RISK_GRID:
        if _meets_target(_decide(out_of_fold, classes, tail_risk, options), labels, options):
            return tail_risk
    return TAIL_RISK_GRID[-1]


def _decide(
    probabilities: npt.NDArray[np.float64],
    classes: npt.NDArray[np.int64],
    tail_risk: float,
    options: TrainOptions,
) -> npt.NDArray[np.int64]:
    """The rounds the gateway would grant: the decision rule, never below the floor."""
    return np.maximum(decide_rounds(probabilities, classes, tail_risk), options.floor)


def _meets_target(
    rounds: npt.NDArray[np.int64], labels: npt.NDArray[np.int64], options: TrainOptions
) -> bool:
    harmful = labels > 0
    return not harmful.any() or bool((rounds[harmful] < labels[harmful]).mean() <= options.target_under_share)


def _evaluate(
    predictor: RoundPredictor, rows: Sequence[LabelledRow], options: TrainOptions
) -> dict[str, Any]:
    matrix = to_matrix([row.vector(options.config) for row in rows], options.config.n_features)
    predicted = predictor.rounds_for_matrix(matrix)
    labels = [min(row.label_rounds, options.max_rounds) for row in rows]
    harmful = [row.harmful for row in rows]
    metrics = round_metrics(labels, predicted.tolist(), harmful, options.max_rounds)
    by_source: dict[str, Any] = {}
    for source, harmful_flag in sorted({(row.source, row.harmful) for row in rows}):
        picked = [i for i, row in enumerate(rows) if row.source == source and row.harmful == harmful_flag]
        name = f"{source}:{'harmful' if harmful_flag else 'benign'}"
        by_source[name] = round_metrics(
            [labels[i] for i in picked],
            [int(predicted[i]) for i in picked],
            [harmful_flag] * len(picked),
            options.max_rounds,
        )
    metrics["by_source"] = by_source
    return metrics


def _strata(rows: Sequence[LabelledRow], minimum: int) -> npt.NDArray[np.str_]:
    """Stratify by source and harmfulness; fall back to harmfulness when a stratum is too small to split."""
    keys = np.array([f"{row.source}:{row.harmful}" for row in rows])
    if min(Counter(keys.tolist()).values()) < minimum:
        keys = np.array([str(row.harmful) for row in rows])
    return keys


def _training_info(
    options: TrainOptions, family: str, train_rows: int, held_out_ids: list[str]
) -> dict[str, Any]:
    estimator = (
        f"MultinomialNB(alpha={NAIVE_BAYES_ALPHA})"
        if family == NAIVE_BAYES
        else f"LogisticRegression(C={options.regularization}, class_weight=balanced)"
    )
    return {
        "model": f"{estimator} over hashed n-grams and cheap signals",
        "family": family,
        "family_rule": FAMILY_RULE if options.family == BEST else f"fixed by the caller ({family})",
        "seed": options.seed,
        "test_size": options.test_size,
        "train_rows": train_rows,
        "held_out_rows": len(held_out_ids),
        "held_out_ids": held_out_ids,
        "stratified_by": "source and harmfulness",
        "grouped_by": (
            f"near-duplicate requests (word Jaccard >= {NEAR_DUPLICATE_JACCARD}) and jailbreak templates"
        ),
        "fitted_part": "dev (the evaluation's heldout part is never fitted or calibrated on)",
        "target_under_share": options.target_under_share,
        "floor": options.floor,
        "tail_risk_calibration": f"{options.folds}-fold out-of-fold on the training split",
        "eval_only_sources": sorted(EVAL_ONLY_SOURCES),
    }


def _rounded(value: Any) -> float:
    return round(float(value), 4)
