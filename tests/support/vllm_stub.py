"""A loopback stand-in for vLLM's OpenAI-compatible server, written from vLLM's documentation.

It is a fake (there is no GPU here to run vLLM), and only a fake of the behaviour the gateway relies on:
- `GET /health`, `GET /v1/models`;
- `POST /v1/chat/completions`, JSON and SSE (`stream_options.include_usage`, `data: [DONE]`), `n`, `tools`
  (tool_calls, streamed as deltas), JSON `response_format`, `logprobs`/`top_logprobs` (vLLM caps k at
  `--max-logprobs`, 20);
- `continue_final_message: true` with `add_generation_prompt: false` continues the last assistant message;
- `usage.prompt_tokens_details.cached_tokens` from a prefix cache of earlier prompts (automatic prefix
  caching), in whole blocks of 16 tokens as vLLM counts them;
- a 404 error object for an unknown model, 400 for a malformed request.

What it answers is tests/support/fake_model.py. Knobs for benchmarks and fault tests: `latency_s` before each
answer, `token_delay_s` between streamed tokens. Every request body is kept in `received` (unless
`keep_received` is off) so tests can assert what reached "vLLM".
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.support.fake_model import Choice, answer, prompt_words, yes_probability
from tests.support.loopback import free_port, serving_app

__all__ = ["StubState", "VllmStub", "free_port", "running_stub", "yes_probability"]

BLOCK = 16


@dataclass
class StubState:
    model: str = "stub-model"
    extra_models: tuple[str, ...] = ()
    latency_s: float = 0.0
    token_delay_s: float = 0.0
    answer_length: int = 64
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    cache: list[tuple[str, ...]] = field(default_factory=list)
    model_lists: int = 0
    """GET /v1/models requests answered."""
    keep_received: bool = True
    created: int = 1_700_000_000


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "BadRequestError", "param": None, "code": code or status}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class VllmStub:
    def __init__(self, state: StubState | None = None) -> None:
        self.state = state or StubState()
        self.app = web.Application()
        self.app.router.add_get("/health", self.health)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/chat/completions", self.chat)

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(text="")

    async def models(self, _: web.Request) -> web.Response:
        self.state.model_lists += 1
        cards = [
            {"id": name, "object": "model", "created": 0, "owned_by": "vllm", "max_model_len": 4096}
            for name in (self.state.model, *self.state.extra_models)
        ]
        return web.json_response({"object": "list", "data": cards})

    def _cached_tokens(self, prompt: tuple[str, ...]) -> int:
        best = 0
        for earlier in self.state.cache:
            n = 0
            for a, b in zip(earlier, prompt, strict=False):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        self.state.cache.append(prompt)
        del self.state.cache[:-64]
        return (best // BLOCK) * BLOCK

    def _invalid(self, body: dict[str, Any]) -> web.Response | None:
        if body.get("model") not in (self.state.model, *self.state.extra_models):
            return _error(404, f"The model `{body.get('model')}` does not exist.", "model_not_found")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages must be a non-empty list")
        continuing = bool(body.get("continue_final_message"))
        if continuing and (
            messages[-1].get("role") != "assistant" or body.get("add_generation_prompt", True)
        ):
            return _error(
                400, "continue_final_message needs a final assistant message and add_generation_prompt=false"
            )
        return None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "invalid JSON")
        if self.state.keep_received:
            self.state.received.append(body)
            self.state.headers.append(dict(request.headers))
        invalid = self._invalid(body)
        if invalid is not None:
            return invalid
        if self.state.latency_s:
            await asyncio.sleep(self.state.latency_s)
        choices = answer(body, self.state.answer_length)
        prompt = prompt_words(body["messages"])
        completion_tokens = sum(len(c.pieces) or 1 for c in choices)
        usage = {
            "prompt_tokens": len(prompt),
            "completion_tokens": completion_tokens,
            "total_tokens": len(prompt) + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self._cached_tokens(prompt)},
        }
        # Deterministic ids and timestamps, so the same request gets the same bytes (byte-comparison tests).
        rid = "chatcmpl-" + hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]
        if body.get("stream"):
            return await self._stream(request, body, rid, choices, usage)
        return web.json_response(
            {
                "id": rid,
                "object": "chat.completion",
                "created": self.state.created,
                "model": body["model"],
                "choices": [
                    {
                        "index": c.index,
                        "message": {
                            "role": "assistant",
                            "content": c.content,
                            **({"tool_calls": [c.tool_call]} if c.tool_call else {}),
                        },
                        "logprobs": c.logprobs,
                        "finish_reason": c.finish_reason,
                    }
                    for c in choices
                ],
                "usage": usage,
            }
        )

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        rid: str,
        choices: list[Choice],
        usage: dict[str, Any],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": self.state.created,
            "model": body["model"],
        }

        async def send(choice: dict[str, Any] | None, **extra: Any) -> None:
            event = {**base, "choices": [choice] if choice else [], **extra}
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")

        def delta(index: int, content: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"index": index, "delta": content, "logprobs": None, "finish_reason": finish}

        for choice in choices:
            await send(delta(choice.index, {"role": "assistant", "content": ""}))
            if choice.tool_call:
                call = choice.tool_call
                head = {**call, "index": 0, "function": {"name": call["function"]["name"], "arguments": ""}}
                await send(delta(choice.index, {"tool_calls": [head]}))
                arguments = call["function"]["arguments"]
                for start in range(0, len(arguments), 8):
                    part = {"index": 0, "function": {"arguments": arguments[start : start + 8]}}
                    await send(delta(choice.index, {"tool_calls": [part]}))
            for position, piece in enumerate(choice.pieces):
                if self.state.token_delay_s:
                    await asyncio.sleep(self.state.token_delay_s)
                event = delta(choice.index, {"content": piece})
                if choice.logprobs:
                    event["logprobs"] = {"content": [choice.logprobs["content"][position]]}
                await send(event)
            await send(delta(choice.index, {}, choice.finish_reason))
        if (body.get("stream_options") or {}).get("include_usage"):
            await send(None, usage=usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@contextmanager
def running_stub(state: StubState | None = None, port: int | None = None) -> Iterator[tuple[str, VllmStub]]:
    """Serve a stub on loopback in a thread of its own; yields its base URL and the stub."""
    stub = VllmStub(state)
    with serving_app(stub.app, port) as url:
        yield url, stub
