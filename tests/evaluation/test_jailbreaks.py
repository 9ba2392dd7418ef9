"""Jailbreak sets and the held-out split, on the shipped data (the same layout as ../shared/data)."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from evaluation.datasets import SHIPPED_DATA_DIR, Item, in_split, load_advbench, sample
from evaluation.jailbreaks import PERSONA_ACCEPTED, dan_templates, wei_templates
from evaluation.registry import LOADERS, DatasetSpec
from evaluation.runner import EvalConfig, select_items
from evaluation.splits import part_of, parts_by_rank

JAILBREAK_SETS = ("jailbreak_dan", "jailbreak_wei")


def items_of(name: str) -> list[Item]:
    return LOADERS[name](SHIPPED_DATA_DIR)


def test_dan_templates_are_the_thirteen_distinct_ones_with_the_target_named() -> None:
    templates = dan_templates(SHIPPED_DATA_DIR)
    files = sorted((SHIPPED_DATA_DIR / "jailbreak_dan").glob("*.json"))
    assert len(files) == 14
    assert len({json.loads(path.read_text())[0] for path in files}) == len(templates) == 13
    assert all("{generator.name}" not in t.text for t in templates)
    assert any("ChatGPT" in t.text for t in templates)


@pytest.mark.parametrize("name", JAILBREAK_SETS)
def test_each_item_wraps_one_advbench_request_and_is_judged_against_it(name: str) -> None:
    goals = {goal.item_id: goal.prompt_text for goal in load_advbench(SHIPPED_DATA_DIR)}
    items = items_of(name)
    assert sorted(item.meta["goal_id"] for item in items) == sorted(goals)
    for item in items:
        [message] = item.messages
        request = goals[item.meta["goal_id"]]
        assert request in message.content
        assert len(message.content) > len(request)  # the wrapper is there
        assert item.prompt_text == request  # attack success is judged against the request
        assert item.label == "harmful"
        assert "INSERT PROMPT HERE" not in message.content
        assert "{request}" not in message.content


@pytest.mark.parametrize(
    ("name", "templates", "held_out"), [("jailbreak_dan", 13, 4), ("jailbreak_wei", 6, 2)]
)
def test_templates_and_requests_never_cross_the_split(name: str, templates: int, held_out: int) -> None:
    items = items_of(name)
    parts_of_template: dict[str, set[str]] = defaultdict(set)
    for item in items:
        parts_of_template[item.meta["template"]].add(item.split)
        # a held-out item pairs a held-out request with a held-out template, and likewise for dev
        assert part_of(f"advbench:{item.meta['goal_id']}") == item.split
    assert all(len(parts) == 1 for parts in parts_of_template.values()), parts_of_template
    names = [t.name for t in (dan_templates if name == "jailbreak_dan" else wei_templates)(SHIPPED_DATA_DIR)]
    ranks = parts_by_rank(names, name)
    assert len(ranks) == templates
    assert sum(part == "heldout" for part in ranks.values()) == held_out
    assert {item.split for item in items} == {"dev", "heldout"}


def test_the_dan_set_in_turns_sends_the_request_after_the_persona_is_accepted() -> None:
    """The same items as `jailbreak_dan` (pairs, parts, held-out templates), as three turns."""
    one_message = {item.item_id: item for item in items_of("jailbreak_dan")}
    in_turns = items_of("jailbreak_dan_turns")
    assert sorted(item.item_id for item in in_turns) == sorted(one_message)
    for item in in_turns:
        single = one_message[item.item_id]
        assert (item.split, item.meta["template"], item.request) == (
            single.split,
            single.meta["template"],
            single.request,
        )
        template, accepted, request = item.messages
        assert (template.role, accepted.role, request.role) == ("user", "assistant", "user")
        assert accepted.content == PERSONA_ACCEPTED
        assert request.content == item.prompt_text == item.request
        assert item.request not in template.content
        assert "INSERT PROMPT HERE" not in template.content
        assert len(template.content) > 200


def test_a_limit_draws_the_same_dan_items_in_turns_as_in_one_message() -> None:
    """So the two rows of a table compare the same pairs (each set's draw is seeded by its family)."""
    pool = {name: items_of(name) for name in ("jailbreak_dan", "jailbreak_dan_turns")}
    limit = len(pool["jailbreak_dan"]) // 2
    drawn = {name: [item.item_id for item in sample(items, limit, seed=0)] for name, items in pool.items()}
    assert 2 <= len(drawn["jailbreak_dan"]) < len(pool["jailbreak_dan"])
    assert drawn["jailbreak_dan_turns"] == drawn["jailbreak_dan"]


def test_every_wei_family_is_used() -> None:
    families = {t.name for t in wei_templates(SHIPPED_DATA_DIR)}
    assert families == {
        "prefix_injection",
        "refusal_suppression",
        "style_injection",
        "distractors",
        "wikipedia_article",
        "combination",
    }


def test_a_run_on_one_part_sees_only_that_part() -> None:
    def selected(split: str | None) -> list[Item]:
        config = EvalConfig(
            base_url="http://127.0.0.1:9/v1",
            model="m",
            plans=(),
            datasets=(DatasetSpec("advbench"), DatasetSpec("xstest"), DatasetSpec("jailbreak_dan")),
            data_dir=SHIPPED_DATA_DIR,
            out_dir=SHIPPED_DATA_DIR,
            split=split,  # type: ignore[arg-type]
        )
        return select_items(config)

    everything, dev, heldout = selected(None), selected("dev"), selected("heldout")
    assert {i.split for i in dev} == {"dev"}
    assert {i.split for i in heldout} == {"heldout"}
    assert len(dev) + len(heldout) == len(everything)
    assert 0 < len(heldout) < len(dev)
    assert in_split(everything, "heldout") == heldout


def test_an_items_part_depends_on_its_identity_only() -> None:
    first = {item.item_id: item.split for item in items_of("xstest")}
    again = {item.item_id: item.split for item in items_of("xstest")}
    assert first == again
    assert first == {item_id: part_of(f"xstest:{item_id}") for item_id in first}


def test_gsm8k_items_ask_for_enough_tokens_to_finish() -> None:
    assert {item.min_tokens for item in items_of("gsm8k")} == {512}
    assert {item.min_tokens for item in items_of("advbench")} == {0}
