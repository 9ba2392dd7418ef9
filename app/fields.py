"""Which request fields each path can honour: the matrix of docs/fields.md, as code.

- Pass-through (vllm backend, no strategy): every field goes to vLLM unchanged; nothing here applies.
- Strategies (either backend): fields that make no sense for an answer the gateway composes (tools, n > 1,
  per-token logprobs) are a 400 naming the field and the strategies; structured output is carried to the
  final call only when the plan has no guard or editor (its last call is then one plain generation).
- vllm backend: sampling and template fields are carried to every call that writes the answer (not to the
  self-check, feedback or question calls, which pin their own sampling).
- embedded backend: the fields it cannot serve are a 400 that says the vllm backend serves them.
Fields nobody knows are ignored on the embedded backend (and logged) and carried on the vllm backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.errors import InvalidRequest

TOOL_FIELDS = frozenset({"tools", "tool_choice", "parallel_tool_calls", "functions", "function_call"})
TOKEN_FIELDS = frozenset({"logprobs", "top_logprobs", "prompt_logprobs"})
STRUCTURED_FIELDS = frozenset(
    {
        "response_format",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_decoding_backend",
        "guided_whitespace_pattern",
        "structured_outputs",
    }
)
SAMPLING_FIELDS = frozenset(
    {
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "logit_bias",
        "top_k",
        "min_p",
        "min_tokens",
        "length_penalty",
        "ignore_eos",
        "stop_token_ids",
        "include_stop_str_in_output",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "bad_words",
        "allowed_token_ids",
        "truncate_prompt_tokens",
        "chat_template",
        "chat_template_kwargs",
        "add_special_tokens",
        "mm_processor_kwargs",
    }
)
# Fields the gateway itself reads; everything else is "extra".
MODELLED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "n",
        "user",
        "stream",
        "stream_options",
    }
)
# OpenAI bookkeeping that changes nothing about the answer.
INERT_FIELDS = frozenset({"metadata", "store", "service_tier", "user", "request_id", "priority"})
GUARDS_AND_EDITORS = frozenset({"psr", "self_refine"})


def _present(payload: Mapping[str, Any], name: str) -> bool:
    value = payload.get(name)
    if value is None:
        return False
    if name == "tool_choice":
        return bool(value != "none")
    if name == "logprobs":
        return value is True
    return not (isinstance(value, list | dict) and not value)


def extra_fields(payload: Mapping[str, Any], strategies: tuple[str, ...], backend: str) -> dict[str, Any]:
    """The fields to carry to the answer-writing calls; InvalidRequest for one the plan cannot honour."""
    plan = ",".join(strategies)
    extras = {k: v for k, v in payload.items() if k not in MODELLED_FIELDS and k not in INERT_FIELDS}
    for name in sorted(extras):
        if not _present(payload, name):
            continue
        if strategies and name in TOOL_FIELDS | TOKEN_FIELDS:
            raise InvalidRequest(
                f"'{name}' cannot be honoured with X-Twice-Strategy: {plan}; send the request without "
                "strategies (X-Twice-Strategy: none) to use it.",
                param=name,
                code="unsupported_with_strategy",
            )
        if name in STRUCTURED_FIELDS and GUARDS_AND_EDITORS.intersection(strategies):
            raise InvalidRequest(
                f"'{name}' cannot be honoured with X-Twice-Strategy: {plan}: psr writes the answer in "
                "checked chunks and self_refine rewrites it; structured output works with role_play, "
                "self_question or no strategy.",
                param=name,
                code="unsupported_with_strategy",
            )
        if backend == "embedded" and name in TOOL_FIELDS | TOKEN_FIELDS | STRUCTURED_FIELDS | SAMPLING_FIELDS:
            raise InvalidRequest(
                f"'{name}' is not supported by the embedded backend; the vllm backend serves it "
                "(TWICE_BACKEND=vllm).",
                param=name,
                code="unsupported_by_backend",
            )
    if backend == "embedded":
        return {}
    return {k: v for k, v in extras.items() if _present(payload, k)}
