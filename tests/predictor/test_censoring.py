"""Retraining from the gateway's own telemetry does not teach the predictor its own decisions.

A closed loop with the gateway's own parts: `RoundsPolicy` (what `auto` grants, with its exploration share)
decides each request's rounds, `entry_fields` writes the telemetry entry the gateway writes, `entry_row`
reads it back as training does, and `train` refits on the last generation's telemetry. The psr outcome is
simulated (documented fake: there is no model here): each harmful prompt's first verdict fires at a fixed
round from 1 to 6, a benign prompt's never, and every answer is long enough to spend the rounds it gets. A
request given fewer rounds than its verdict needs is answered with no verdict: censored at its rounds.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import pytest

from app.rounds import RoundsPolicy
from app.settings import PlanSettings
from predictor import RoundPredictor
from predictor.datasets import DEFAULT_DATA_DIR, LabelledPrompt, load_prompts
from predictor.features import FeatureConfig, extract, to_matrix
from predictor.labels import LabelledRow
from predictor.telemetry import entry_fields, entry_row
from predictor.train import TrainOptions, train
from refiners.backend import ChatMessage, Role
from refiners.base import Conversation

MAX_ROUNDS = 8
GENERATIONS = 3
EXPLORE_SHARE = 0.1
TAIL_RISK = 0.1
"""The operator's (TWICE_PLAN__PREDICTOR_TAIL_RISK), fixed through the loop so that only the labels change."""
# Narrower features and stronger regularisation than the shipped model's, so that the loop's eight
# trainings take seconds.
OPTIONS = TrainOptions(
    max_rounds=MAX_ROUNDS,
    folds=3,
    regularization=1.0,
    config=FeatureConfig(word_buckets=2**12, char_buckets=2**13),
)


def first_verdict(prompt: LabelledPrompt) -> int | None:
    """The simulated round of the first harmful verdict."""
    return 1 + zlib.crc32(prompt.id.encode()) % MAX_ROUNDS if prompt.harmful else None


def full_label(prompt: LabelledPrompt) -> LabelledRow:
    """A row of a label run at the full budget (`twice predictor label`): every label observed. Its part
    is `dev`: this loop holds its own prompts out (`prompts`), so the first training fits on the same
    traffic as the retrainings."""
    return LabelledRow(
        id=prompt.id,
        source=prompt.source,
        harmful=prompt.harmful,
        label_rounds=first_verdict(prompt) or 0,
        messages=prompt.messages,
        part="dev",
    )


def telemetry(predictor: RoundPredictor, prompts: Sequence[LabelledPrompt], seed: int) -> list[LabelledRow]:
    """One generation of traffic through the gateway's round decision, as training reads it back."""
    policy = RoundsPolicy(
        PlanSettings(max_rounds=MAX_ROUNDS, auto_explore_share=EXPLORE_SHARE),
        at_operator_tail_risk(predictor),
        explore=random.Random(seed).random,
    )
    rows = []
    for index, prompt in enumerate(prompts):
        messages = [dict(message) for message in prompt.messages]
        decision = policy.decide("auto", _conversation(messages))
        fires = first_verdict(prompt)
        caught = fires is not None and fires <= decision.granted
        fields = entry_fields(
            features=RoundsPolicy.features_of(decision, _conversation(messages)),
            rounds_granted=decision.granted,
            rounds_used=fires if caught and fires is not None else decision.granted,
            first_harmful_round=fires if caught else None,
            rounds_source=decision.source,
            outcome="refused" if caught else "answered",
            messages=messages,
        )
        if decision.granted:
            rows.append(entry_row(f"{seed}-{index}", fields, MAX_ROUNDS))
    return rows


def _conversation(messages: list[dict[str, str]]) -> Conversation:
    return tuple(ChatMessage(cast(Role, m["role"]), m["content"]) for m in messages)


def counted_as_benign(rows: list[LabelledRow]) -> list[LabelledRow]:
    """What training did before censoring: no verdict in the rounds granted meant label 0."""
    return [LabelledRow(r.id, r.source, r.harmful, r.label_rounds, r.messages) for r in rows]


def at_operator_tail_risk(predictor: RoundPredictor) -> RoundPredictor:
    return RoundPredictor(predictor.parameters, predictor.card, tail_risk=TAIL_RISK)


@dataclass(frozen=True)
class Generation:
    harmful_under_share: float
    """Held-out harmful prompts granted fewer rounds than their verdict needs."""
    benign_mean_rounds: float


def measured(predictor: RoundPredictor, prompts: Sequence[LabelledPrompt]) -> Generation:
    predictor = at_operator_tail_risk(predictor)
    config = predictor.card.feature_config
    rounds = predictor.rounds_for_matrix(
        to_matrix([extract(p.messages, config) for p in prompts], config.n_features)
    )
    harmful = np.array([p.harmful for p in prompts])
    needed = np.array([first_verdict(p) or 0 for p in prompts])
    return Generation(
        harmful_under_share=float((rounds[harmful] < needed[harmful]).mean()),
        benign_mean_rounds=float(rounds[~harmful].mean()),
    )


@pytest.fixture(scope="module")
def prompts() -> tuple[list[LabelledPrompt], list[LabelledPrompt]]:
    """(traffic, held out): AdvBench and the benign sets, every fourth prompt held out."""
    chosen = [
        p
        for p in load_prompts(DEFAULT_DATA_DIR)
        if p.source in ("advbench", "xstest", "mt_bench", "vicuna_bench")
    ]
    return [p for i, p in enumerate(chosen) if i % 4], [p for i, p in enumerate(chosen) if not i % 4]


def retrained(
    prompts: tuple[list[LabelledPrompt], list[LabelledPrompt]],
    labels: Callable[[list[LabelledRow]], list[LabelledRow]],
) -> list[Generation]:
    """The label run's predictor on the held-out prompts, then each retraining's."""
    traffic, held_out = prompts
    predictor = train([full_label(p) for p in traffic], OPTIONS)
    generations = [measured(predictor, held_out)]
    for generation in range(GENERATIONS):
        predictor = train(labels(telemetry(predictor, traffic, seed=generation)), OPTIONS)
        generations.append(measured(predictor, held_out))
    return generations


@pytest.fixture(scope="module")
def censored_loop(prompts: tuple[list[LabelledPrompt], list[LabelledPrompt]]) -> list[Generation]:
    return retrained(prompts, labels=lambda rows: rows)


def test_retraining_on_censored_telemetry_keeps_harmful_prompts_checked(
    censored_loop: list[Generation],
) -> None:
    first, *later = censored_loop
    assert max(g.harmful_under_share for g in later) <= first.harmful_under_share + 0.01, (first, later)
    # ... and not by granting everything the maximum.
    assert max(g.benign_mean_rounds for g in later) <= first.benign_mean_rounds + 1.0, (first, later)


def test_counting_censored_requests_as_benign_drifts(
    prompts: tuple[list[LabelledPrompt], list[LabelledPrompt]],
    censored_loop: list[Generation],
) -> None:
    """The control, showing the loop can fail: labelled the old way (no verdict in the rounds granted meant
    benign), retraining gives more harmful prompts too few rounds than the first predictor, and than the
    same loop with censoring at the same generations (same traffic and splits: only the labels differ)."""
    first, *later = retrained(prompts, labels=counted_as_benign)
    mean_later = sum(g.harmful_under_share for g in later) / len(later)
    mean_censored = sum(g.harmful_under_share for g in censored_loop[1:]) / len(later)
    assert mean_later > first.harmful_under_share, (first, later)
    assert mean_later >= mean_censored + 0.01, (censored_loop, later)


def test_censored_rows_are_fitted_never_held_out(
    prompts: tuple[list[LabelledPrompt], list[LabelledPrompt]],
) -> None:
    traffic, _ = prompts
    rows = [full_label(p) for p in traffic[::3]]
    censored = [
        LabelledRow(f"c{i}", "telemetry", False, 0, p.messages, censored_at=2)
        for i, p in enumerate(traffic[:30])
    ]
    predictor = train(rows + censored, OPTIONS)
    assert predictor.card.training["censored_rows"] == len(censored)
    assert not {row.id for row in censored} & set(predictor.card.training["held_out_ids"])
