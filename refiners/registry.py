"""The strategies, by header token. Adding one is a new module and one line here.

The table's order is the canonical order within a stage; stages run shapers → guard → editors (DESIGN §4),
whatever order a request names them in. Every strategy class has `name`, `stage` and `__init__(config)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

from refiners.base import Editor, Guard, Shaper, Strategy
from refiners.config import RefinerConfig
from refiners.psr import Psr
from refiners.role_play import RolePlay
from refiners.self_question import SelfQuestion
from refiners.self_refine import SelfRefine

REGISTRY: Mapping[str, type[RolePlay | SelfQuestion | Psr | SelfRefine]] = {
    "role_play": RolePlay,
    "self_question": SelfQuestion,
    "psr": Psr,
    "self_refine": SelfRefine,
}

STAGES = ("shaper", "guard", "editor")


def _check_registry() -> None:
    for key, cls in REGISTRY.items():
        if cls.name != key or cls.stage not in STAGES:
            raise ValueError(f"strategy {key!r} is registered under the wrong name or stage")


_check_registry()


def build_strategies(config: RefinerConfig) -> dict[str, Strategy]:
    """One instance of every strategy (some keep per-worker state, such as role_play's cache)."""
    return {key: cls(config) for key, cls in REGISTRY.items()}


def canonical_order(names: Iterable[str]) -> tuple[str, ...]:
    """`names` in pipeline order: by stage, then by registry order."""
    wanted = set(names)
    return tuple(
        key for stage in STAGES for key, cls in REGISTRY.items() if key in wanted and cls.stage == stage
    )


def split_stages(
    names: Iterable[str], strategies: Mapping[str, Strategy]
) -> tuple[list[Shaper], Guard | None, list[Editor]]:
    shapers: list[Shaper] = []
    guard: Guard | None = None
    editors: list[Editor] = []
    for name in canonical_order(names):
        strategy = strategies[name]
        stage = REGISTRY[name].stage
        if stage == "guard":
            guard = cast(Guard, strategy)
        elif stage == "editor":
            editors.append(cast(Editor, strategy))
        else:
            shapers.append(cast(Shaper, strategy))
    return shapers, guard, editors
