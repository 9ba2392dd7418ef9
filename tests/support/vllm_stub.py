"""A loopback stand-in for vLLM's OpenAI-compatible server, written from vLLM's documentation.

It is a fake (there is no GPU here to run vLLM), and only a fake of the behaviour the gateway relies on:
- `GET /health`, `GET /v1/models`;
- `POST /v1/chat/completions`, JSON and SSE (`stream_options.include_usage`, `data: [DONE]`);
- `continue_final_message: true` with `add_generation_prompt: false` continues the last assistant message;
- `logprobs: true, top_logprobs: k` returns the first token's top-k (vLLM caps k at `--max-logprobs`, 20);
- `usage.prompt_tokens_details.cached_tokens` from a prefix cache of earlier prompts (automatic prefix
  caching), in whole blocks of 16 tokens as vLLM counts them;
- a 404 error object for an unknown model, 400 for a malformed request.

Its "model" is deterministic: the answer to a conversation is a fixed word sequence chosen by a hash of
the conversation, one word per token, so a continuation is exactly the rest of the answer. The first-token
distribution puts P("Yes") = `yes_probability(prompt)`: 0.9 when the prompt contains UNSAFE, else 0.05.

Knobs for benchmarks and fault tests: `latency_s` before each answer, `token_delay_s` between streamed
tokens. Every request body is kept in `received` so tests can assert what reached "vLLM".
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]
BLOCK = 16
MAX_LOGPROBS = 20


def yes_probability(prompt_text: str) -> float:
    return 0.9 if "UNSAFE" in prompt_text else 0.05


@dataclass
class StubState:
    model: str = "stub-model"
    latency_s: float = 0.0
    token_delay_s: float = 0.0
    answer_length: int = 64
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    cache: list[tuple[str, ...]] = field(default_factory=list)
    keep_received: bool = True
    created: int = 1_700_000_000


def _tokens(text: str) -> list[str]:
    return text.split()


def _answer(conversation_key: str, length: int) -> list[str]:
    seed = int.from_bytes(hashlib.sha256(conversation_key.encode()).digest()[:4], "big")
    return [WORDS[(seed + i * 7) % len(WORDS)] for i in range(length)]


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
        card = {
            "id": self.state.model,
            "object": "model",
            "created": 0,
            "owned_by": "vllm",
            "max_model_len": 4096,
        }
        return web.json_response({"object": "list", "data": [card]})

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

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "invalid JSON")
        if self.state.keep_received:
            self.state.received.append(body)
            self.state.headers.append(dict(request.headers))
        if body.get("model") != self.state.model:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "model_not_found")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages must be a non-empty list")
        if self.state.latency_s:
            await asyncio.sleep(self.state.latency_s)

        continuing = bool(body.get("continue_final_message"))
        if continuing and (
            messages[-1].get("role") != "assistant" or body.get("add_generation_prompt", True)
        ):
            return _error(
                400, "continue_final_message needs a final assistant message and add_generation_prompt=false"
            )
        context = messages[:-1] if continuing else messages
        partial = _tokens(messages[-1].get("content") or "") if continuing else []
        key = orjson.dumps(context).decode()
        prompt = tuple(
            w for m in messages for w in [f"<{m.get('role')}>", *_tokens(str(m.get("content") or ""))]
        )
        cached = self._cached_tokens(prompt)
        rest = _answer(key, self.state.answer_length)[len(partial) :]
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        out = rest[:max_tokens]
        finish = "length" if len(rest) > max_tokens else "stop"
        # Continuations glue on with a leading space, as a tokenizer's word pieces would.
        pieces = [(" " if (i or partial) else "") + w for i, w in enumerate(out)]
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        text = "".join(pieces)
        for stop in stops:
            if stop and stop in text:
                text, finish = text[: text.index(stop)], "stop"
                kept, pieces = pieces, []
                for piece in kept:
                    if len("".join(pieces)) + len(piece) > len(text):
                        pieces.append(text[len("".join(pieces)) :])
                        break
                    pieces.append(piece)
        usage = {
            "prompt_tokens": len(prompt),
            "completion_tokens": len(pieces),
            "total_tokens": len(prompt) + len(pieces),
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        logprobs = None
        if body.get("logprobs"):
            p_yes = yes_probability(" ".join(prompt))
            k = min(int(body.get("top_logprobs") or 0), MAX_LOGPROBS)
            top = [("Yes", p_yes), ("No", (1 - p_yes) * 0.9)] + [
                (w, (1 - p_yes) * 0.1 / 8) for w in WORDS[:8]
            ]
            first = pieces[0] if pieces else ""
            logprobs = {
                "content": [
                    {
                        "token": first,
                        "logprob": -0.1,
                        "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top[:k]],
                    }
                ]
            }
        # Deterministic ids and timestamps, so the same request gets the same bytes (byte-comparison tests).
        rid = "chatcmpl-" + hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]
        if body.get("stream"):
            return await self._stream(request, body, rid, pieces, finish, usage)
        return web.json_response(
            {
                "id": rid,
                "object": "chat.completion",
                "created": self.state.created,
                "model": self.state.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(pieces)},
                        "logprobs": logprobs,
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
        )

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        rid: str,
        pieces: list[str],
        finish: str,
        usage: dict[str, Any],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": self.state.created,
            "model": self.state.model,
        }

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            await response.write(b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n")

        await send(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )
        for piece in pieces:
            if self.state.token_delay_s:
                await asyncio.sleep(self.state.token_delay_s)
            await send([{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
        await send([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_stub(state: StubState | None = None, port: int | None = None) -> Iterator[tuple[str, VllmStub]]:
    """Serve a stub on loopback in a thread of its own; yields its base URL and the stub."""
    stub = VllmStub(state)
    port = port or free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(stub.app, access_log=None)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True, name="vllm-stub")
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the vLLM stub did not start")
    try:
        yield f"http://127.0.0.1:{port}", stub
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
