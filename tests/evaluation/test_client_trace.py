"""What a record keeps of the gateway's trace: the scored steps, without the prompts and outputs."""

from __future__ import annotations

from typing import Any

from evaluation.client import split_trace


def step(name: str, score: float | None = None, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "strategy": "psr",
        "step": name,
        "round": 1,
        "checkpoint": 32,
        "prompt": [{"role": "user", "content": "hidden review prompt"}],
        "output": "Yes",
        "elapsed_ms": 12.5,
    }
    return base | ({"score": score} if score is not None else {}) | fields


def test_scored_steps_are_kept_without_their_texts() -> None:
    twice = {
        "backend_calls": 4,
        "trace": [
            step("generate"),
            step("verdict", 0.61, harmful=True, off_format=False),
            step("verdict_without_review_talk", 0.22, harmful=False, off_format=False, round=2),
        ],
    }
    rest, checks = split_trace(twice)
    assert rest == {"backend_calls": 4}
    kept = {"strategy": "psr", "checkpoint": 32, "off_format": False}
    assert checks == [
        kept | {"step": "verdict", "round": 1, "score": 0.61, "harmful": True},
        kept | {"step": "verdict_without_review_talk", "round": 2, "score": 0.22, "harmful": False},
    ]
    assert "trace" in twice  # the response itself is not changed


def test_no_trace_is_not_an_empty_one() -> None:
    assert split_trace({"backend_calls": 1}) == ({"backend_calls": 1}, None)
    assert split_trace({"trace": "garbled"}) == ({}, None)
    assert split_trace({"trace": []}) == ({}, [])
