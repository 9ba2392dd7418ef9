"""Which request fields each path can honour (app/fields.py, the matrix of docs/fields.md).

The same rules seen through a gateway and the vLLM stub are in tests/api/test_vllm_fields.py; these pin the
matrix cell by cell, including what counts as a field being present.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import InvalidRequest
from app.fields import (
    SAMPLING_FIELDS,
    STRUCTURED_FIELDS,
    TOKEN_FIELDS,
    TOOL_FIELDS,
    extra_fields,
)

BASE: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0.2,
    "max_tokens": 8,
    "stream": True,
    "user": "u",
}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]


def refused(payload: dict[str, Any], strategies: tuple[str, ...], backend: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as raised:
        extra_fields(payload, strategies, backend)
    assert raised.value.status_code == 400
    return raised.value


def test_the_gateways_own_and_inert_fields_are_never_carried() -> None:
    payload = {**BASE, "metadata": {"a": "b"}, "store": True, "service_tier": "auto", "priority": 1}
    assert extra_fields(payload, (), "vllm") == {}
    assert extra_fields(payload, ("psr",), "vllm") == {}


def test_the_vllm_backend_carries_sampling_structured_and_unknown_fields() -> None:
    payload = {**BASE, "top_k": 5, "response_format": {"type": "json_object"}, "brand_new_field": [1]}
    assert extra_fields(payload, (), "vllm") == {
        "top_k": 5,
        "response_format": {"type": "json_object"},
        "brand_new_field": [1],
    }
    assert extra_fields(payload, ("role_play",), "vllm") == extra_fields(payload, (), "vllm")


@pytest.mark.parametrize("name", sorted(TOOL_FIELDS | TOKEN_FIELDS))
@pytest.mark.parametrize("strategies", [("psr",), ("role_play",), ("self_question", "self_refine")])
def test_tools_and_logprobs_are_refused_with_any_strategy_naming_the_field_and_plan(
    name: str, strategies: tuple[str, ...]
) -> None:
    payload = {**BASE, name: True if name == "logprobs" else TOOLS}
    error = refused(payload, strategies, "vllm")
    assert error.param == name
    assert error.code == "unsupported_with_strategy"
    assert ",".join(strategies) in error.message
    assert extra_fields(payload, (), "vllm")[name] == payload[name]  # without strategies: passed on


@pytest.mark.parametrize("strategies", [("psr",), ("self_refine",), ("psr", "role_play")])
def test_structured_output_is_refused_when_a_guard_or_editor_writes_the_answer(
    strategies: tuple[str, ...],
) -> None:
    error = refused({**BASE, "guided_json": {"type": "object"}}, strategies, "vllm")
    assert (error.param, error.code) == ("guided_json", "unsupported_with_strategy")
    assert "structured output works with role_play" in error.message


@pytest.mark.parametrize("strategies", [("role_play",), ("self_question",), ("role_play", "self_question")])
def test_structured_output_is_carried_when_no_guard_or_editor_runs(strategies: tuple[str, ...]) -> None:
    payload = {**BASE, "response_format": {"type": "json_object"}}
    assert extra_fields(payload, strategies, "vllm") == {"response_format": {"type": "json_object"}}


@pytest.mark.parametrize("name", sorted(TOOL_FIELDS | TOKEN_FIELDS | STRUCTURED_FIELDS | SAMPLING_FIELDS))
def test_the_embedded_backend_names_the_backend_that_serves_a_field(name: str) -> None:
    error = refused({**BASE, name: True if name == "logprobs" else 1}, (), "embedded")
    assert (error.param, error.code) == (name, "unsupported_by_backend")
    assert "TWICE_BACKEND=vllm" in error.message


def test_the_embedded_backend_ignores_fields_nobody_knows() -> None:
    assert extra_fields({**BASE, "brand_new_field": 1}, (), "embedded") == {}
    assert extra_fields({**BASE, "brand_new_field": 1}, ("psr",), "embedded") == {}


@pytest.mark.parametrize(
    ("name", "absent"),
    [
        ("tools", None),
        ("tools", []),
        ("tool_choice", "none"),
        ("functions", {}),
        ("logprobs", False),
        ("logit_bias", {}),
        ("response_format", None),
    ],
)
def test_a_field_sent_empty_off_or_null_is_not_present(name: str, absent: object) -> None:
    """OpenAI clients send `tools: []`, `tool_choice: "none"`, `logprobs: false`: none of that asks for
    anything a strategy or the embedded backend cannot give, and none of it is carried."""
    payload = {**BASE, name: absent}
    assert extra_fields(payload, ("psr",), "vllm") == {}
    assert extra_fields(payload, (), "embedded") == {}


def test_a_top_logprobs_of_zero_is_present() -> None:
    """Only null, empty containers, `tool_choice: none` and `logprobs` other than true are absent: a 0 is a
    value the client chose."""
    assert refused({**BASE, "top_logprobs": 0}, ("psr",), "vllm").param == "top_logprobs"


def test_the_first_offending_field_in_name_order_is_named() -> None:
    payload = {**BASE, "tools": TOOLS, "logprobs": True, "functions": TOOLS}
    assert refused(payload, ("psr",), "vllm").param == "functions"
