"""The deterministic "model" behind the vLLM stand-in: what it answers to a chat request body.

The answer to a conversation is a fixed word sequence chosen by a hash of the conversation (and the choice
index, for n > 1), one word per token, so a continuation (`continue_final_message`) is exactly the rest of
the answer. With `tools` (and `tool_choice` other than "none") it calls the first tool; with a JSON
`response_format` it answers a JSON object; with `logprobs` it reports every token's logprob and the top-k
first tokens, where P("Yes") = `yes_probability(prompt)`: 0.9 when the prompt contains UNSAFE, else 0.05.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

WORDS = [
    *("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"),
    *("kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"),
    *("uniform", "victor", "whiskey", "xray", "yankee", "zulu"),
]
MAX_LOGPROBS = 20


def yes_probability(prompt_text: str) -> float:
    return 0.9 if "UNSAFE" in prompt_text else 0.05


def _answer(conversation_key: str, length: int) -> list[str]:
    seed = int.from_bytes(hashlib.sha256(conversation_key.encode()).digest()[:4], "big")
    return [WORDS[(seed + i * 7) % len(WORDS)] for i in range(length)]


@dataclass
class Choice:
    index: int
    pieces: list[str] = field(default_factory=list)
    """Content deltas, in order (empty for a tool call)."""
    finish_reason: str = "stop"
    tool_call: dict[str, Any] | None = None
    logprobs: dict[str, Any] | None = None

    @property
    def content(self) -> str | None:
        return None if self.tool_call else "".join(self.pieces)


def prompt_words(messages: list[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(w for m in messages for w in [f"<{m.get('role')}>", *str(m.get("content") or "").split()])


def _cut_at_stop(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    text = "".join(pieces)
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
            kept: list[str] = []
            for piece in pieces:
                room = len(text) - len("".join(kept))
                if room <= 0:
                    break
                kept.append(piece[:room])
            return kept, True
    return pieces, False


def _logprobs(pieces: list[str], prompt: tuple[str, ...], top_k: int) -> dict[str, Any]:
    p_yes = yes_probability(" ".join(prompt))
    top = [("Yes", p_yes), ("No", (1 - p_yes) * 0.9)] + [(w, (1 - p_yes) * 0.1 / 8) for w in WORDS[:8]]
    entries = [
        {
            "token": piece,
            "logprob": -0.1,
            "bytes": list(piece.encode()),
            "top_logprobs": [
                {"token": t, "logprob": math.log(p), "bytes": list(t.encode())} for t, p in top[:top_k]
            ],
        }
        for piece in (pieces or [""])
    ]
    return {"content": entries}


def answer(body: dict[str, Any], answer_length: int) -> list[Choice]:
    """The choices the fake model gives to a chat-completions body (already validated)."""
    messages: list[dict[str, Any]] = body["messages"]
    continuing = bool(body.get("continue_final_message"))
    context = messages[:-1] if continuing else messages
    partial = str(messages[-1].get("content") or "").split() if continuing else []
    prompt = prompt_words(messages)
    max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
    stops = body.get("stop") or []
    stops = [stops] if isinstance(stops, str) else list(stops)
    tools = body.get("tools") or []
    wants_tool = bool(tools) and body.get("tool_choice", "auto") != "none"
    response_format = (body.get("response_format") or {}).get("type")
    choices = []
    for index in range(int(body.get("n") or 1)):
        key = orjson.dumps(context).decode() + (f"#{index}" if index else "")
        rest = _answer(key, answer_length)[len(partial) :]
        out = rest[:max_tokens]
        finish = "length" if len(rest) > max_tokens else "stop"
        pieces = [(" " if (i or partial) else "") + w for i, w in enumerate(out)]
        pieces, stopped = _cut_at_stop(pieces, stops)
        finish = "stop" if stopped else finish
        choice = Choice(index=index, pieces=pieces, finish_reason=finish)
        if wants_tool:
            function = tools[0].get("function", {})
            arguments = orjson.dumps({"query": " ".join(out[:3])}).decode()
            call_id = "call_" + hashlib.sha256(key.encode()).hexdigest()[:12]
            choice.tool_call = {
                "id": call_id,
                "type": "function",
                "function": {"name": function.get("name", "tool"), "arguments": arguments},
            }
            choice.pieces, choice.finish_reason = [], "tool_calls"
        elif response_format in ("json_object", "json_schema"):
            choice.pieces = [orjson.dumps({"answer": " ".join(out)}).decode()]
        if body.get("logprobs"):
            top_k = min(int(body.get("top_logprobs") or 0), MAX_LOGPROBS)
            choice.logprobs = _logprobs(choice.pieces, prompt, top_k)
        choices.append(choice)
    return choices
