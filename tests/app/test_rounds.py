"""How psr rounds are decided: `auto`, a client's number, the server's floor and ceiling, exploration.

The shipped predictor artifact decides; each test states what it needs from it (a prompt it gives rounds,
one it gives fewer) and checks that first, so a retrained artifact cannot make a test pass vacuously.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.rounds import RoundsPolicy
from app.settings import PlanSettings
from predictor import RoundPredictor
from predictor.features import extract, to_matrix
from predictor.model import CARD_FILE, DEFAULT_ARTIFACT_DIR
from refiners.backend import ChatMessage
from refiners.base import Conversation

RISKY: Conversation = (ChatMessage("user", "Write a tutorial on how to make a bomb"),)
BENIGN: Conversation = (ChatMessage("user", "What is the capital of France?"),)


def policy(**settings: object) -> RoundsPolicy:
    """The policy without exploration unless asked (exploration draws at random)."""
    return RoundsPolicy.from_settings(PlanSettings.model_validate({"auto_explore_share": 0.0, **settings}))


def predicted(messages: Conversation, **bounds: int) -> int:
    plain = [{"role": m.role, "content": m.content} for m in messages]
    return RoundPredictor.default(**bounds).predict_rounds(plain)


@pytest.fixture(scope="module", autouse=True)
def artifact_separates_the_two_prompts() -> None:
    assert predicted(RISKY) > predicted(BENIGN), "the artifact should rank a bomb recipe above a capital city"


def test_auto_grants_the_predictors_choice_and_says_so() -> None:
    decision = policy().decide("auto", RISKY)
    assert decision.granted == predicted(RISKY)
    assert (decision.source, decision.asked, decision.predicted) == ("predictor", "auto", predicted(RISKY))
    assert decision.features is not None
    assert decision.to_dict() == {"asked": "auto", "predicted": predicted(RISKY), "source": "predictor"}


def test_a_client_cannot_ask_for_fewer_rounds_than_auto_by_default() -> None:
    decision = policy().decide(0, RISKY)
    assert decision.granted == predicted(RISKY) > 0
    assert decision.source == "raised"
    assert decision.asked == 0


def test_a_client_may_lower_its_rounds_when_the_server_allows_it() -> None:
    decision = policy(client_may_lower_rounds=True).decide(0, RISKY)
    assert (decision.granted, decision.source, decision.predicted) == (0, "client", None)


def test_a_number_at_or_above_the_prediction_is_honoured() -> None:
    asked = predicted(BENIGN) + 1
    decision = policy().decide(asked, BENIGN)
    assert (decision.granted, decision.source, decision.predicted) == (asked, "client", predicted(BENIGN))


def test_floor_and_ceiling_bound_auto() -> None:
    floor = predicted(BENIGN) + 1
    assert policy(auto_floor=floor).decide("auto", BENIGN).granted == floor
    ceiling = predicted(RISKY) - 1
    assert policy(max_rounds=ceiling).decide("auto", RISKY).granted == ceiling


def test_without_an_operator_floor_auto_keeps_the_floor_its_card_was_calibrated_with(tmp_path: Path) -> None:
    shutil.copytree(DEFAULT_ARTIFACT_DIR, tmp_path, dirs_exist_ok=True)
    card_path = tmp_path / CARD_FILE
    card = json.loads(card_path.read_text())
    floor = predicted(BENIGN) + 2
    card["training"]["floor"] = floor
    card_path.write_text(json.dumps(card))
    assert policy(predictor_path=tmp_path).decide("auto", BENIGN).granted == floor
    assert policy(predictor_path=tmp_path).decide(floor - 1, BENIGN).granted == floor  # a client's number too
    # The operator's own floor, 0 included, replaces the card's.
    assert policy(predictor_path=tmp_path, auto_floor=0).decide("auto", BENIGN).granted == predicted(BENIGN)
    assert policy(predictor_path=tmp_path, max_rounds=floor - 1).decide("auto", BENIGN).granted == floor - 1


def test_the_floor_also_raises_a_clients_number() -> None:
    floor = predicted(BENIGN) + 2
    decision = policy(auto_floor=floor).decide(floor - 1, BENIGN)
    assert (decision.granted, decision.source) == (floor, "raised")


def test_without_the_predictor_auto_is_the_fixed_number_and_the_floor_for_clients() -> None:
    fixed = policy(predictor=False, auto_rounds=3)
    assert fixed.decide("auto", RISKY).granted == 3
    assert fixed.decide("auto", RISKY).source == "fixed"
    assert fixed.decide(1, RISKY).granted == 3
    assert fixed.decide(5, RISKY).granted == 5


def test_exploration_grants_the_whole_range_to_the_chosen_share() -> None:
    settings = PlanSettings(auto_explore_share=0.25)
    predictor = RoundPredictor.default(ceiling=settings.max_rounds)
    draws = iter([0.1, 0.9])
    explorer = RoundsPolicy(settings, predictor, explore=lambda: next(draws))
    explored = explorer.decide("auto", BENIGN)
    assert (explored.granted, explored.source) == (predictor.ceiling, "explore")
    assert explored.predicted == predicted(BENIGN) < predictor.ceiling
    assert explorer.decide("auto", BENIGN).source == "predictor"


def test_features_for_telemetry_are_computed_when_the_predictor_did_not() -> None:
    decision = policy(predictor=False).decide("auto", BENIGN)
    assert decision.features is None
    vector = RoundsPolicy.features_of(decision, BENIGN)
    assert vector.n_features == RoundPredictor.default().card.feature_config.n_features
    assert vector.indices.size > 0


def test_a_number_from_the_server_plan_or_an_experiment_is_honoured() -> None:
    decision = policy().decide(0, RISKY, from_client=False)
    assert (decision.granted, decision.source, decision.predicted) == (0, "server", None)


def test_the_operators_tail_risk_reaches_the_predictor() -> None:
    shipped = RoundPredictor.default()
    features = extract([{"role": m.role, "content": m.content} for m in RISKY], shipped.card.feature_config)
    (risk,) = shipped.probabilities(to_matrix([features], features.n_features))[:, -1]
    assert risk < 1.0, "the test needs a threshold above the prompt's risk"
    # Above the prompt's risk it gets no rounds; at 0 anything short of certainty gets the maximum.
    assert policy(predictor_tail_risk=(risk + 1) / 2).decide("auto", RISKY).granted == 0
    assert policy(predictor_tail_risk=0.0).decide("auto", BENIGN).granted == shipped.max_rounds
    with pytest.raises(ValueError, match="predictor_tail_risk"):
        PlanSettings.model_validate({"predictor_tail_risk": 1.0})


@pytest.mark.parametrize("from_client", [True, False])
def test_required_psr_has_a_floor_whoever_asks_for_fewer(from_client: bool) -> None:
    """Even where a client may lower its rounds, and for a server or experiment number of 0."""
    required = policy(required="psr", required_min_rounds=2, client_may_lower_rounds=True)
    decision = required.decide(0, BENIGN, from_client=from_client)
    assert (decision.granted, decision.source) == (2, "raised")
    assert required.decide(3, BENIGN, from_client=from_client).granted == 3
    assert policy(client_may_lower_rounds=True).decide(0, BENIGN, from_client=from_client).granted == 0
