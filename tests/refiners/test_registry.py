"""The registry's canonical order."""

from __future__ import annotations

from refiners.registry import canonical_order


def test_canonical_order_ignores_header_order() -> None:
    assert canonical_order(["self_refine", "psr", "self_question", "role_play"]) == (
        "role_play",
        "self_question",
        "psr",
        "self_refine",
    )
