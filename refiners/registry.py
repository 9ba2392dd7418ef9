"""The strategies, by header token. Adding one is a new module and one line in each table here.

The table's order is the canonical order within a stage; stages run shapers → guard → editors (DESIGN §4),
whatever order a request names them in. Every strategy class has `name` and `stage`, and is made for each
request from that request's settings (refiners/settings.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from refiners.base import Stage, Step, Strategy
from refiners.config import RefinerConfig
from refiners.psr import Psr
from refiners.role_play import RoleCache, RolePlay
from refiners.self_question import SelfQuestion
from refiners.self_refine import SelfRefine
from refiners.settings import PsrSettings, RolePlaySettings, SelfQuestionSettings, SelfRefineSettings

REGISTRY: Mapping[str, type[RolePlay | SelfQuestion | Psr | SelfRefine]] = {
    "role_play": RolePlay,
    "self_question": SelfQuestion,
    "psr": Psr,
    "self_refine": SelfRefine,
}

STAGES: tuple[Stage, ...] = ("shaper", "guard", "editor")

MakeStep = Callable[[RefinerConfig, int], Step]
"""(the request's config, its granted psr rounds) -> the strategy's step for that request."""


def _check_registry() -> None:
    for key, cls in REGISTRY.items():
        if cls.name != key or cls.stage not in STAGES:
            raise ValueError(f"strategy {key!r} is registered under the wrong name or stage")


_check_registry()


@dataclass(frozen=True, slots=True)
class Registered:
    """A strategy as a worker keeps it: its name, its stage, and how it makes each request's step."""

    name: str
    stage: Stage
    make: MakeStep

    def for_request(self, config: RefinerConfig, rounds: int) -> Step:
        return self.make(config, rounds)


def build_strategies(config: RefinerConfig) -> dict[str, Strategy]:
    """Every strategy, once per worker. `config` sizes what the worker keeps across requests (role_play's
    cache of roles); each request's settings come from that request's own config and rounds."""
    roles = RoleCache(config.role_play.cache_size)
    makers: dict[str, MakeStep] = {
        "role_play": lambda c, _rounds: RolePlay(RolePlaySettings.of(c.role_play), roles),
        "self_question": lambda c, _rounds: SelfQuestion(SelfQuestionSettings.of(c.self_question)),
        "psr": lambda c, rounds: Psr(PsrSettings.of(c.psr, rounds)),
        "self_refine": lambda c, _rounds: SelfRefine(SelfRefineSettings.of(c.self_refine, c.psr)),
    }
    if makers.keys() != REGISTRY.keys():
        raise ValueError("every registered strategy needs a maker, and only those")
    return {key: Registered(key, cls.stage, makers[key]) for key, cls in REGISTRY.items()}


def canonical_order(names: Iterable[str]) -> tuple[str, ...]:
    """`names` in pipeline order: by stage, then by registry order."""
    wanted = set(names)
    return tuple(
        key for stage in STAGES for key, cls in REGISTRY.items() if key in wanted and cls.stage == stage
    )
