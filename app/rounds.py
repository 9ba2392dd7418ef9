"""How many psr rounds a request gets: the client's ask, the round predictor's choice and the server's bounds.

- `auto` (the header, or a default plan of `auto`): the predictor's choice within [auto_floor, max_rounds]
  (auto_floor unset: the floor the predictor's tail risk was calibrated with, from its card);
  `auto_rounds` when the predictor is off. A share `auto_explore_share` of `auto` requests gets the
  predictor's whole range instead, so that telemetry keeps observing traffic it would check little.
- A number from the client's X-Twice-Rounds: honoured when it is at least what `auto` would grant. Below
  that it is raised to it, unless the server lets clients lower their budget (`client_may_lower_rounds`):
  otherwise `X-Twice-Rounds: 0` would let any client switch the self-check off.
- A number from the server (its default plan, an experiment's variant): honoured as it is.
- When the operator requires psr (`required`), never fewer than `required_min_rounds`, whoever asked.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from app.plan import Rounds, required_strategies
from app.settings import PlanSettings
from predictor import RoundPredictor
from predictor.features import FeatureConfig, FeatureVector, extract
from predictor.model import DEFAULT_ARTIFACT_DIR
from refiners.base import Conversation

RoundsSource = Literal["client", "raised", "server", "predictor", "explore", "fixed"]
ROUNDS_SOURCES: tuple[RoundsSource, ...] = ("client", "raised", "server", "predictor", "explore", "fixed")
"""client: the number the client asked; raised: a client's number below what `auto` grants, raised to it;
server: the number of the server's plan or experiment; predictor: `auto`'s choice; explore: `auto` given the
predictor's whole range; fixed: `auto` with the predictor off."""

ROUNDS_GRANTED_HEADER = "X-Twice-Rounds-Granted"


@dataclass(frozen=True, slots=True)
class RoundsDecision:
    granted: int
    asked: Rounds
    source: RoundsSource
    predicted: int | None = None
    """What `auto` would have granted (the predictor's choice), when the predictor was asked."""
    features: FeatureVector | None = None
    """The request's features, when the predictor computed them (telemetry reuses them)."""

    def to_dict(self) -> dict[str, Any]:
        return {"asked": self.asked, "predicted": self.predicted, "source": self.source}


NO_ROUNDS = RoundsDecision(granted=0, asked=0, source="client")


class RoundsPolicy:
    """Decides the rounds of each psr request; built once per app (it holds the loaded predictor)."""

    def __init__(
        self,
        settings: PlanSettings,
        predictor: RoundPredictor | None,
        explore: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._predictor = predictor
        self._explore = explore
        self._floor = (
            predictor.floor if predictor is not None else min(settings.auto_floor or 0, settings.max_rounds)
        )
        self._required_floor = (
            min(settings.required_min_rounds, settings.max_rounds)
            if "psr" in required_strategies(settings)
            else 0
        )

    @classmethod
    def from_settings(cls, settings: PlanSettings) -> RoundsPolicy:
        """Loads the configured artifact; one that fails its card check stops start-up."""
        if not settings.predictor:
            return cls(settings, None)
        predictor = RoundPredictor.load(
            settings.predictor_path or DEFAULT_ARTIFACT_DIR,
            floor=None if settings.auto_floor is None else min(settings.auto_floor, settings.max_rounds),
            ceiling=settings.max_rounds,
            tail_risk=settings.predictor_tail_risk,
        )
        return cls(settings, predictor)

    def decide(self, asked: Rounds, messages: Conversation, *, from_client: bool = True) -> RoundsDecision:
        """The rounds granted; never fewer than the operator's floor when psr is required."""
        decision = self._decide(asked, messages, from_client=from_client)
        if decision.granted >= self._required_floor:
            return decision
        return replace(decision, granted=self._required_floor, source="raised")

    def _decide(self, asked: Rounds, messages: Conversation, *, from_client: bool) -> RoundsDecision:
        if asked != "auto" and not from_client:
            return RoundsDecision(granted=asked, asked=asked, source="server")
        if asked != "auto" and self._settings.client_may_lower_rounds:
            return RoundsDecision(granted=asked, asked=asked, source="client")
        features: FeatureVector | None = None
        source: RoundsSource = "fixed"
        predicted: int | None = None
        if self._predictor is None:
            floor = min(self._settings.auto_rounds, self._settings.max_rounds)
        else:
            features = extract(plain_messages(messages), self._predictor.card.feature_config)
            floor = predicted = self._predictor.rounds_for(features)
            source = "predictor"
        if asked != "auto":
            floor = max(floor, self._floor)
            if asked >= floor:
                return RoundsDecision(asked, asked, "client", predicted, features)
            return RoundsDecision(floor, asked, "raised", predicted, features)
        share = self._settings.auto_explore_share
        if self._predictor is not None and share > 0 and self._explore() < share:
            return RoundsDecision(self._predictor.ceiling, asked, "explore", predicted, features)
        return RoundsDecision(floor, asked, source, predicted, features)

    @staticmethod
    def features_of(decision: RoundsDecision, messages: Conversation) -> FeatureVector:
        """The request's features for telemetry: the predictor's, else computed with this code's config."""
        if decision.features is not None:
            return decision.features
        return extract(plain_messages(messages), FeatureConfig())


def plain_messages(messages: Conversation) -> list[dict[str, Any]]:
    """OpenAI-style dicts, as the predictor's features and the telemetry's text take them."""
    return [{"role": m.role, "content": m.content} for m in messages]
