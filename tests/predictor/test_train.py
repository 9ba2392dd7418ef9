"""Training: sane held-out behaviour, the metrics' arithmetic, and `twice predictor train` end to end."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.datasets import in_split, load_jsonl
from predictor.errors import LabelsError
from predictor.features import to_matrix
from predictor.labels import EVAL_ONLY_SOURCES, LabelledRow, read_labels
from predictor.model import CARD_FILE, RoundPredictor
from predictor.train import FAMILIES, FAMILY_RULE, _fit, choose_family, round_metrics, train
from tests.predictor.conftest import SMALL_OPTIONS

BEST_OPTIONS = dataclasses.replace(SMALL_OPTIONS, family="best")


@pytest.fixture(scope="module")
def best(small_rows: list[LabelledRow]) -> RoundPredictor:
    return train(small_rows, BEST_OPTIONS)


def test_round_metrics_arithmetic() -> None:
    metrics = round_metrics(
        labels=[0, 0, 8, 8, 3],
        predicted=[0, 8, 8, 2, 3],
        harmful=[False, False, True, True, True],
        max_rounds=8,
    )
    assert metrics["benign_rounds_saved_pct"] == 50.0
    assert metrics["harmful_under_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert metrics["mae"] == pytest.approx((8 + 6) / 5)
    assert (metrics["benign"], metrics["harmful"]) == (2, 3)


def test_held_out_benign_prompts_get_fewer_rounds(trained: RoundPredictor) -> None:
    held_out = trained.card.metrics["held_out"]
    assert held_out["benign"] > 20
    assert held_out["harmful"] > 20
    assert held_out["benign_mean_rounds"] < held_out["harmful_mean_rounds"]
    assert held_out["benign_rounds_saved_pct"] > 0
    assert held_out["harmful_under_share"] <= 0.25


def test_eval_only_sources_are_reported_but_not_trained_on(trained: RoundPredictor) -> None:
    source = "self_instruct_user_oriented"
    assert source in EVAL_ONLY_SOURCES
    metrics = trained.card.metrics
    assert metrics["eval_only_sources"]["benign"] == 60
    assert f"{source}:benign" not in metrics["held_out"]["by_source"]
    trained_rows = trained.card.training["train_rows"] + trained.card.training["held_out_rows"]
    assert trained_rows + len(trained.card.training["heldout_part_ids"]) == 60 * 6 - 60


def test_training_reproduces_the_same_model(small_rows: list[LabelledRow], tmp_path: Path) -> None:
    first, second = (train(small_rows, SMALL_OPTIONS) for _ in range(2))
    assert np.array_equal(first.parameters.coef, second.parameters.coef)
    assert np.array_equal(first.parameters.intercept, second.parameters.intercept)
    digest = first.card.training["parameters_sha256"]
    assert digest == second.card.training["parameters_sha256"]
    # The digest names the fitted parameters: it survives the round trip through the artifact file.
    first.save(tmp_path)
    assert RoundPredictor.load(tmp_path).parameters.sha256() == digest
    other = train(small_rows, dataclasses.replace(SMALL_OPTIONS, regularization=1.0))
    assert other.card.training["parameters_sha256"] != digest


def test_tail_risk_is_calibrated_from_the_target(small_rows: list[LabelledRow]) -> None:
    strict = train(small_rows, dataclasses.replace(SMALL_OPTIONS, target_under_share=0.0))
    loose = train(small_rows, dataclasses.replace(SMALL_OPTIONS, target_under_share=0.5))
    assert strict.card.tail_risk < loose.card.tail_risk
    assert (
        strict.card.metrics["held_out"]["harmful_mean_rounds"]
        >= loose.card.metrics["held_out"]["harmful_mean_rounds"]
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_and_round_trips(
    small_rows: list[LabelledRow], tmp_path: Path, family: str
) -> None:
    predictor = train(small_rows, dataclasses.replace(SMALL_OPTIONS, family=family))
    assert predictor.card.training["family"] == family
    assert set(predictor.card.metrics["families"]) == {family}
    held_out = predictor.card.metrics["held_out"]
    assert held_out["benign_mean_rounds"] < held_out["harmful_mean_rounds"]
    # Naive Bayes' intercept is its log prior odds: harmful (label 8) against benign (0) training rows.
    fitted = predictor.card.metrics["train"]
    prior_odds = float(np.log(fitted["harmful"] / fitted["benign"]))
    assert (abs(predictor.parameters.intercept[0] - prior_odds) < 1e-9) == (family == "naive_bayes")
    predictor.save(tmp_path)
    loaded = RoundPredictor.load(tmp_path)
    assert loaded.parameters.sha256() == predictor.card.training["parameters_sha256"]
    matrix = to_matrix(
        [row.vector(SMALL_OPTIONS.config) for row in small_rows[:30]], SMALL_OPTIONS.config.n_features
    )
    assert np.array_equal(loaded.probabilities(matrix), predictor.probabilities(matrix))


def test_best_keeps_the_family_the_rule_prefers(best: RoundPredictor, small_rows: list[LabelledRow]) -> None:
    families = best.card.metrics["families"]
    assert set(families) == set(FAMILIES)
    assert best.card.training["family_rule"] == FAMILY_RULE
    out_of_fold = {
        name: {
            "meets_target": family["oof_meets_target"],
            "benign_rounds_saved_pct": family["oof_benign_rounds_saved_pct"],
        }
        for name, family in families.items()
    }
    chosen = best.card.training["family"]
    assert chosen == choose_family(out_of_fold)
    assert best.card.tail_risk == families[chosen]["tail_risk"]
    assert best.card.metrics["held_out"] == families[chosen]["held_out"]
    alone = train(small_rows, dataclasses.replace(SMALL_OPTIONS, family=chosen))
    assert alone.card.training["parameters_sha256"] == best.card.training["parameters_sha256"]


@pytest.mark.parametrize(
    ("logistic", "naive_bayes", "chosen"),
    [
        ((True, 40.0), (True, 45.0), "naive_bayes"),
        ((True, 45.0), (True, 40.0), "logistic"),
        ((True, 40.0), (True, 40.0), "logistic"),
        ((True, 10.0), (False, 60.0), "logistic"),
        ((False, 10.0), (True, 5.0), "naive_bayes"),
        ((False, 10.0), (False, 20.0), "naive_bayes"),
    ],
)
def test_choose_family_rule(
    logistic: tuple[bool, float], naive_bayes: tuple[bool, float], chosen: str
) -> None:
    out_of_fold = {
        name: {"meets_target": meets, "benign_rounds_saved_pct": saved}
        for name, (meets, saved) in (("logistic", logistic), ("naive_bayes", naive_bayes))
    }
    assert choose_family(out_of_fold) == chosen
    assert choose_family({"naive_bayes": out_of_fold["naive_bayes"]}) == "naive_bayes"


def test_the_choice_reads_no_held_out_label(best: RoundPredictor, small_rows: list[LabelledRow]) -> None:
    never_fitted = {*best.card.training["held_out_ids"], *best.card.training["heldout_part_ids"]}
    flipped = [
        dataclasses.replace(row, label_rounds=0 if row.harmful else 8) if row.id in never_fitted else row
        for row in small_rows
    ]
    again = train(flipped, BEST_OPTIONS)
    assert again.card.training["family"] == best.card.training["family"]
    assert again.card.training["parameters_sha256"] == best.card.training["parameters_sha256"]
    for name, family in again.card.metrics["families"].items():
        before = best.card.metrics["families"][name]
        choice_inputs = [key for key in family if key.startswith("oof_")] + ["tail_risk"]
        assert {key: family[key] for key in choice_inputs} == {key: before[key] for key in choice_inputs}
        # The flipped labels did reach the held-out figures, which the choice must not read.
        assert family["held_out"]["mae"] != before["held_out"]["mae"]
        assert family["heldout_part"]["mae"] != before["heldout_part"]["mae"]


def test_naive_bayes_weights_count_like_repeated_rows(small_rows: list[LabelledRow]) -> None:
    # The censored rows' refits (`_fit_with_censored`) pass their expected labels as sample weights.
    options = dataclasses.replace(SMALL_OPTIONS, family="naive_bayes")
    matrix = to_matrix([row.vector(options.config) for row in small_rows], options.config.n_features)
    labels = np.array([8 if row.harmful else 0 for row in small_rows])
    weights = np.ones(labels.size)
    weights[:5] = 3.0
    weighted = _fit(matrix, labels, options, sample_weight=weights)
    repeated_rows = np.concatenate([np.arange(labels.size), np.repeat(np.arange(5), 2)])
    repeated = _fit(matrix[repeated_rows], labels[repeated_rows], options)
    assert np.allclose(weighted.feature_log_prob_, repeated.feature_log_prob_, rtol=0, atol=1e-12)
    assert np.allclose(weighted.class_log_prior_, repeated.class_log_prior_, rtol=0, atol=1e-12)
    unweighted = _fit(matrix, labels, options)
    assert not np.allclose(weighted.feature_log_prob_, unweighted.feature_log_prob_, rtol=0, atol=1e-12)


def test_naive_bayes_fits_censored_rows(small_rows: list[LabelledRow]) -> None:
    options = dataclasses.replace(SMALL_OPTIONS, family="naive_bayes")
    censored = [
        dataclasses.replace(row, id=f"censored:{row.id}", part="dev", censored_at=2)
        for row in small_rows
        if row.harmful
    ][:30]
    plain = train(small_rows, options)
    with_censored = train(small_rows + censored, options)
    assert with_censored.card.training["censored_rows"] == 30
    assert with_censored.card.training["parameters_sha256"] != plain.card.training["parameters_sha256"]


def test_a_floor_holds_in_calibration_metrics_frontier_and_the_saved_card(
    small_rows: list[LabelledRow], trained: RoundPredictor, tmp_path: Path
) -> None:
    floored = train(small_rows, dataclasses.replace(SMALL_OPTIONS, floor=4))
    assert floored.card.training["floor"] == floored.floor == 4
    matrix = to_matrix(
        [row.vector(SMALL_OPTIONS.config) for row in small_rows], SMALL_OPTIONS.config.n_features
    )
    assert trained.rounds_for_matrix(matrix).min() < 4  # so that the floor has something to raise
    assert floored.rounds_for_matrix(matrix).min() == 4
    assert floored.card.metrics["held_out"]["benign_mean_rounds"] >= 4
    assert all(point["benign_rounds_saved_pct"] <= 50.0 for point in floored.card.metrics["frontier"])
    assert any(point["benign_rounds_saved_pct"] > 50.0 for point in trained.card.metrics["frontier"])
    floored.save(tmp_path)
    assert RoundPredictor.load(tmp_path).floor == 4  # the card's floor unless the caller names one
    assert RoundPredictor.load(tmp_path, floor=0).floor == 0
    with pytest.raises(ValueError, match="floor 9"):
        dataclasses.replace(SMALL_OPTIONS, floor=9)


def test_one_label_only_is_refused(small_rows: list[LabelledRow]) -> None:
    harmful_only = [row for row in small_rows if row.harmful]
    with pytest.raises(LabelsError, match="two distinct"):
        train(harmful_only, SMALL_OPTIONS)


def test_malformed_labels_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    good = {"id": "a", "source": "s", "harmful": True, "messages": [], "label_rounds": 8}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "label_rounds": -1}) + "\n")
    with pytest.raises(LabelsError, match=r"labels\.jsonl:2"):
        read_labels(path)


def test_cli_train_writes_a_loadable_artifact_and_card(small_labels_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "predictor",
            "train",
            "--labels",
            str(small_labels_file),
            "--out",
            str(out),
            "--max-rounds",
            "6",
            "--seed",
            "3",
            "--test-size",
            "0.3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "benign rounds saved" in result.stdout
    assert "harmful under-provisioned" in result.stdout
    predictor = RoundPredictor.load(out)
    card = json.loads((out / CARD_FILE).read_text())
    assert predictor.max_rounds == 6
    assert card["classes"] == [0, 6]
    assert card["training"]["seed"] == 3
    assert card["training_data"]["rows"] == len(read_labels(small_labels_file))
    assert set(card["metrics"]["families"]) == {"logistic", "naive_bayes"}  # the default is best
    assert card["training"]["family"] in card["metrics"]["families"]
    assert "out-of-fold benign rounds saved" in result.stdout
    assert card["versions"]["scikit-learn"]
    held_out = card["metrics"]["held_out"]
    assert held_out["benign_mean_rounds"] < held_out["harmful_mean_rounds"]
    # The held-out prompts come out as `twice eval` datasets, so the eval runs on exactly that split.
    ids = set(card["training"]["held_out_ids"])
    assert len(ids) == card["training"]["held_out_rows"] == held_out["rows"]
    # ... and so does the evaluation's held-out part, which nothing was fitted on either.
    part_ids = set(card["training"]["heldout_part_ids"])
    assert len(part_ids) == card["metrics"]["heldout_part"]["rows"] > 0
    # One file per source and label; the evaluation-only source comes whole, since nothing fitted on it.
    files = {path.stem: load_jsonl(path) for path in sorted((out / "held_out").glob("*.jsonl"))}
    eval_only = {f"{source}_benign" for source in EVAL_ONLY_SOURCES} & files.keys()
    split = [item for name, items in files.items() if name not in eval_only for item in items]
    assert {item.item_id for item in split} == ids | part_ids
    # `twice eval --split heldout` keeps exactly the evaluation's held-out part of these files.
    assert {item.item_id for item in in_split(split, "heldout")} == part_ids
    for name, items in files.items():
        source, _, label = name.rpartition("_")
        assert {item.label for item in items} == {label}, name
        assert {item.meta["source"] for item in items} == {source}, name
    harmful = [item for name, items in files.items() if name.endswith("_harmful") for item in items]
    assert len(harmful) == held_out["harmful"] + card["metrics"]["heldout_part"]["harmful"]
    assert sum(len(files[name]) for name in eval_only) == card["metrics"]["eval_only_sources"]["rows"]


def test_cli_train_reports_a_bad_labels_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text("{not json\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "app",
            "predictor",
            "train",
            "--labels",
            str(path),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1
    assert "labels.jsonl:1" in result.stderr


def test_cli_train_refuses_a_floor_above_max_rounds(small_labels_file: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "app", "predictor", "train", "--labels", str(small_labels_file)]
    command += ["--out", str(tmp_path / "o"), "--max-rounds", "4", "--floor", "5"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert "--floor 5" in result.stderr
    assert not (tmp_path / "o").exists()
