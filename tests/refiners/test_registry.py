"""The registry: canonical order, and each strategy made per request with that request's settings
(on the scripted backend, tests/support/scripted_backend.py, a documented fake)."""

from __future__ import annotations

from typing import cast

import pytest

from refiners.base import Guard, Shaper, collect
from refiners.config import PsrConfig, RefinerConfig, RolePlayConfig
from refiners.psr import Psr
from refiners.registry import REGISTRY, build_strategies, canonical_order
from refiners.role_play import RolePlay
from refiners.self_question import SelfQuestion
from refiners.self_refine import SelfRefine
from tests.refiners.conftest import context_of, make_run
from tests.support.scripted_backend import ScriptedBackend


def test_canonical_order_ignores_header_order() -> None:
    assert canonical_order(["self_refine", "psr", "self_question", "role_play"]) == (
        "role_play",
        "self_question",
        "psr",
        "self_refine",
    )


def test_canonical_order_drops_names_it_does_not_know() -> None:
    assert canonical_order(["psr", "nonsense"]) == ("psr",)


def test_every_registered_strategy_is_built_under_its_name_and_stage() -> None:
    strategies = build_strategies(RefinerConfig())
    assert list(strategies) == list(REGISTRY)
    assert {name: s.stage for name, s in strategies.items()} == {
        "role_play": "shaper",
        "self_question": "shaper",
        "psr": "guard",
        "self_refine": "editor",
    }


@pytest.mark.parametrize(
    ("name", "cls"),
    [("role_play", RolePlay), ("self_question", SelfQuestion), ("psr", Psr), ("self_refine", SelfRefine)],
)
def test_each_request_gets_a_step_of_its_own(name: str, cls: type) -> None:
    strategy = build_strategies(RefinerConfig())[name]
    first, second = strategy.for_request(RefinerConfig(), 2), strategy.for_request(RefinerConfig(), 2)
    assert isinstance(first, cls)
    assert first is not second


@pytest.mark.parametrize("rounds", [0, 1, 3])
async def test_psr_is_made_with_the_rounds_granted_to_the_request(rounds: int) -> None:
    backend = ScriptedBackend(answer_words=60)
    run = make_run(backend, rounds=rounds, psr=PsrConfig(chunk_tokens=4, final_check=False))
    guard = cast(Guard, build_strategies(RefinerConfig())["psr"].for_request(run.config, run.rounds))
    await collect(guard.generate(run.messages, context_of(run)))
    assert len(backend.verdict_requests) == rounds


async def test_psr_is_made_with_the_request_config_not_the_workers() -> None:
    """The worker's registry was built with K = 32; the request's config says K = 4."""
    backend = ScriptedBackend(answer_words=60)
    run = make_run(backend, rounds=1, psr=PsrConfig(chunk_tokens=4, final_check=False))
    strategy = build_strategies(RefinerConfig(psr=PsrConfig(chunk_tokens=32)))["psr"]
    guard = cast(Guard, strategy.for_request(run.config, run.rounds))
    await collect(guard.generate(run.messages, context_of(run)))
    assert backend.requests[0].sampling.max_tokens == 4


async def test_role_play_remembers_roles_across_requests_of_one_worker_only() -> None:
    backend = ScriptedBackend(
        texts=["You are a patient teacher of biology.", "You are another expert entirely."]
    )
    worker = build_strategies(RefinerConfig(role_play=RolePlayConfig(cache_size=4)))["role_play"]
    for _ in range(2):
        run = make_run(backend)
        await cast(Shaper, worker.for_request(run.config, run.rounds)).shape(run.messages, context_of(run))
    assert len(backend.requests) == 1  # the second request found the role
    other_worker = build_strategies(RefinerConfig(role_play=RolePlayConfig(cache_size=4)))["role_play"]
    run = make_run(backend)
    await cast(Shaper, other_worker.for_request(run.config, run.rounds)).shape(run.messages, context_of(run))
    assert len(backend.requests) == 2
