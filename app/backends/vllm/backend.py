"""The `refiners.backend.Backend` contract against vLLM's OpenAI-compatible server, and the pass-through call.

Partial answers are continued with `continue_final_message: true, add_generation_prompt: false`, so each
call of a request shares its prefix with the one before and vLLM's prefix cache serves it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiohttp
import orjson

from app.backends.vllm.relay import Relayed, relayed
from app.backends.vllm.sse import event_data
from app.backends.vllm.transport import Transport, event_stream, header_value, read_body
from app.settings import VllmSettings
from app.upstreams import UpstreamObserver, UpstreamPool
from refiners.backend import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    Completion,
    CompletionChunk,
    FinishReason,
    GenerationRequest,
    TokenDistribution,
    Usage,
)

log = logging.getLogger("twice.backends.vllm")

MODELS_REFRESH_S = 10.0


def _usage(payload: dict[str, Any] | None) -> Usage:
    if not payload:
        return Usage()
    details = payload.get("prompt_tokens_details") or {}
    return Usage(
        prompt_tokens=int(payload.get("prompt_tokens") or 0),
        completion_tokens=int(payload.get("completion_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
    )


def _finish(reason: Any) -> FinishReason:
    return "length" if reason == "length" else "stop"


def _upstream_message(body: bytes) -> str:
    try:
        error = orjson.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    return str(message or "the model backend rejected the request")[:500]


def _stream_event(data: bytes) -> dict[str, Any]:
    try:
        event: dict[str, Any] = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BackendError("vLLM sent a malformed stream event") from exc
    if event.get("error"):
        raise BackendError("vLLM reported an error mid-stream")
    return event


async def _read_ok(response: aiohttp.ClientResponse) -> bytes:
    """The body of a successful answer; a failed one raised as the twice error its status means."""
    body = await read_body(response)
    if response.status >= 500:
        raise (BackendUnavailable if response.status == 503 else BackendError)(
            f"vLLM answered {response.status}"
        )
    if response.status >= 400:
        raise BackendRejected(_upstream_message(body), status=response.status)
    return body


class VllmBackend:
    """Implements `refiners.backend.Backend` against vLLM, plus the raw pass-through the gateway uses."""

    def __init__(self, settings: VllmSettings, *, pool: UpstreamPool | None = None) -> None:
        self._pool = pool or UpstreamPool(settings)
        self._transport = Transport(settings, self._pool)
        self._routing_header = settings.routing_header
        self._model = settings.model or ""
        self._known_models: frozenset[str] = frozenset()
        self._models_checked = -MODELS_REFRESH_S
        self._models_asking: asyncio.Task[bool] | None = None
        """The one model-list refresh in flight: concurrent requests share it rather than each asking vLLM."""

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._transport.start()
        await self._pool.start(self._transport.healthy)
        if not self._model:
            try:
                models = await self.list_models()
            except (BackendError, LookupError):
                log.warning(
                    "vLLM at %s is not reachable yet; the model id is learnt when it is", self._pool.urls
                )
            else:
                self._model = models[0] if models else ""

    async def close(self) -> None:
        await self._pool.close()
        await self._transport.close()

    @property
    def model(self) -> str:
        return self._model

    async def list_models(self) -> list[str]:
        async with self._transport.open("GET", "/v1/models") as response:
            body = await _read_ok(response)
        models = [str(card["id"]) for card in orjson.loads(body).get("data", []) if "id" in card]
        if models and not self._model:
            self._model = models[0]
        self._known_models = frozenset(models)
        self._models_checked = time.monotonic()
        return models

    async def serves(self, model: str) -> bool:
        """Checked against vLLM's own list (base models and LoRA adapters), asked again at most every
        MODELS_REFRESH_S when a name is not on it. While vLLM cannot be asked, the call decides (503)."""
        if model in self._known_models:
            return True
        if time.monotonic() - self._models_checked >= MODELS_REFRESH_S:
            if self._models_asking is None or self._models_asking.done():
                self._models_asking = asyncio.ensure_future(self._ask_models())
            # Shielded: a client that leaves does not cancel the refresh the others wait on.
            if not await asyncio.shield(self._models_asking):
                return True
        return model in self._known_models

    async def _ask_models(self) -> bool:
        """Refreshes the model list; whether vLLM answered."""
        try:
            await self.list_models()
        except BackendError:
            return False
        return True

    def observe_upstreams(self, observer: UpstreamObserver) -> None:
        """Count upstream calls, health and affinity breaks into `observer` (the gateway's metrics)."""
        self._pool.observe(observer)

    def upstreams_report(self) -> dict[str, Any]:
        """The upstream pool for /ready: mode, healthy and total counts, each upstream's state."""
        return self._pool.report()

    async def check_ready(self) -> bool:
        if self._pool.checking:
            return self._pool.healthy_count() > 0
        try:
            async with self._transport.open("GET", "/health") as response:
                await read_body(response)
                return response.status == 200
        except BackendError:
            return False

    # --- the Backend contract ----------------------------------------------------------------------------

    def _payload(self, request: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        messages: list[dict[str, str]] = [{"role": m.role, "content": m.content} for m in request.messages]
        sampling = request.sampling
        payload: dict[str, Any] = {
            **request.extra,
            "model": request.model or self._model,
            "messages": messages,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stream": stream,
        }
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        if request.prefix:
            messages.append({"role": "assistant", "content": request.prefix})
            payload["continue_final_message"] = True
            payload["add_generation_prompt"] = False
        if stream:
            payload["stream_options"] = {"include_usage": True}
        return payload

    def _routing_headers(self, request: GenerationRequest) -> dict[str, str] | None:
        return {self._routing_header: request.routing_key} if request.routing_key else None

    async def _post_json(self, payload: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
        body = orjson.dumps(payload)
        async with self._transport.open(
            "POST", "/v1/chat/completions", body, self._routing_headers(request)
        ) as response:
            raw = await _read_ok(response)
        try:
            result: dict[str, Any] = orjson.loads(raw)
            result["choices"][0]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise BackendError("vLLM answered something that is not a chat completion") from exc
        return result

    async def complete(self, request: GenerationRequest) -> Completion:
        result = await self._post_json(self._payload(request, stream=False), request)
        choice = result["choices"][0]
        text = (choice.get("message") or {}).get("content") or ""
        return Completion(
            text=text, finish_reason=_finish(choice.get("finish_reason")), usage=_usage(result.get("usage"))
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[CompletionChunk]:
        body = orjson.dumps(self._payload(request, stream=True))
        async with self._transport.open(
            "POST", "/v1/chat/completions", body, self._routing_headers(request)
        ) as response:
            if response.status >= 400:
                await _read_ok(response)
            finish: FinishReason | None = None
            usage: Usage | None = None
            async with aclosing(event_stream(response)) as batches:
                async for events in batches:
                    for data in event_data(events):
                        if data == b"[DONE]":
                            yield CompletionChunk(
                                text="", finish_reason=finish or "stop", usage=usage or Usage()
                            )
                            return
                        event = _stream_event(data)
                        if event.get("usage"):
                            usage = _usage(event["usage"])
                        for choice in event.get("choices") or ():
                            text = (choice.get("delta") or {}).get("content") or ""
                            if choice.get("finish_reason"):
                                finish = _finish(choice["finish_reason"])
                            if text:
                                yield CompletionChunk(text=text)

    async def next_token(self, request: GenerationRequest, top_logprobs: int = 20) -> TokenDistribution:
        payload = self._payload(request, stream=False)
        payload.update(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=top_logprobs)
        payload.pop("seed", None)
        result = await self._post_json(payload, request)
        try:
            entries = result["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendError("vLLM returned no top_logprobs") from exc
        top: dict[str, float] = {}
        for entry in entries:
            token = str(entry.get("token", ""))
            top[token] = top.get(token, 0.0) + math.exp(float(entry.get("logprob", -math.inf)))
        return TokenDistribution(top=top, usage=_usage(result.get("usage")))

    # --- pass-through ------------------------------------------------------------------------------------

    async def forward(
        self, path: str, body: bytes, *, stream: bool, headers: dict[str, str] | None = None
    ) -> Relayed:
        """Send the client's bytes unchanged; what to relay of the answer (`relay.relayed`): its events when
        `stream` asks for them and vLLM streams, else its bytes.

        A pass-through request is one call: a fresh routing key (unless the caller gives one) lets a router
        or the pool spread such requests evenly."""
        sent = dict(headers) if headers else {}
        if not headers or header_value(headers, self._routing_header) is None:
            # 32 random hex digits, as uuid4().hex but without building a UUID (a third of the cost).
            sent[self._routing_header] = secrets.token_hex(16)
        response = await self._transport.send("POST", path, body, sent, track=False)
        return await relayed(response, stream=stream)
