"""role_play on the scripted backend (tests/support/scripted_backend.py, a documented fake)."""

from __future__ import annotations

from refiners.backend import ChatMessage
from refiners.role_play import RoleCache, clean_role
from tests.refiners.conftest import context_of, make_run, role_play_for
from tests.support.scripted_backend import ScriptedBackend


def test_role_cleaning() -> None:
    assert clean_role('"You are a botanist."\n\nMore text') == "You are a botanist."
    assert clean_role("  ") == ""


async def test_role_play_sets_the_role_and_caches_it_by_question() -> None:
    backend = ScriptedBackend(texts=["You are a plant biologist who explains clearly."])
    roles = RoleCache(8)
    run = make_run(backend)
    shaped = await role_play_for(run, roles).shape(run.messages, context_of(run))
    assert shaped[0] == ChatMessage("system", "You are a plant biologist who explains clearly.")
    again = make_run(backend)
    assert await role_play_for(again, roles).shape(again.messages, context_of(again)) == shaped
    assert again.ledger.calls == 0
    assert [s.output for s in again.ledger.steps if s.step == "role"] == [shaped[0].content]


def test_the_role_cache_drops_the_least_recently_used_role() -> None:
    roles = RoleCache(2)
    roles.put("a", "role a")
    roles.put("b", "role b")
    assert roles.get("a") == "role a"  # now the most recent
    roles.put("c", "role c")
    assert (roles.get("a"), roles.get("b"), roles.get("c")) == ("role a", None, "role c")


def test_a_role_cache_of_size_zero_keeps_nothing() -> None:
    roles = RoleCache(0)
    roles.put("a", "role a")
    assert roles.get("a") is None
