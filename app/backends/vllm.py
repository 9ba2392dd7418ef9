"""vLLM's OpenAI-compatible server over HTTP (aiohttp, one pooled session per worker).

aiohttp rather than httpx: on the pass-through path httpx's pool scans its connections on every request and
measured about 6x slower at concurrency 32 (docs/benchmarks.md). Retries (tenacity) happen only when the
connection could not be opened, or the server closed it before any answer (a pooled keep-alive connection to a
replica that went away); an answer that has started is never asked for again.

Calls go to the upstream app/upstreams.py picks by the request's routing key (docs/scaleout.md).

Partial answers are continued with `continue_final_message: true, add_generation_prompt: false`, so each
call of a request shares its prefix with the one before and vLLM's prefix cache serves it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from app.settings import VllmSettings
from app.upstreams import UpstreamObserver, UpstreamPool
from refiners.backend import (
    BackendError,
    BackendRejected,
    BackendTimeout,
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

# Raised before any answer arrived: could not connect (ClientConnectorError, an OSError subclass), or the
# connection broke as the request went out or before vLLM answered (a pooled connection a replica closed).
_RETRIED = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)


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


def _header(headers: dict[str, str] | None, name: str) -> str | None:
    if headers:
        lowered = name.lower()
        for key, value in headers.items():
            if key.lower() == lowered:
                return value
    return None


def _upstream_message(body: bytes) -> str:
    try:
        error = orjson.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    return str(message or "the model backend rejected the request")[:500]


class UpstreamCall:
    """One open HTTP exchange with vLLM; closes its response on exit (pass-through streams read it)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def __aenter__(self) -> aiohttp.ClientResponse:
        return self.response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.response.release()


class VllmBackend:
    """Implements `refiners.backend.Backend` against vLLM, plus the raw pass-through the gateway uses."""

    def __init__(self, settings: VllmSettings) -> None:
        self._settings = settings
        self._pool = UpstreamPool(settings)
        self._routing_header = settings.routing_header
        self._session: aiohttp.ClientSession | None = None
        self._model = settings.model or ""
        self._known_models: frozenset[str] = frozenset()
        self._models_checked = -MODELS_REFRESH_S
        self._models_asking: asyncio.Task[bool] | None = None
        """The one model-list refresh in flight: concurrent requests share it rather than each asking vLLM."""
        self._headers = {"Content-Type": "application/json"}
        if settings.api_key is not None:
            self._headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._settings.connect_timeout_s, sock_read=self._settings.read_timeout_s
        )
        connector = aiohttp.TCPConnector(limit=self._settings.max_connections, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, headers=self._headers, json_serialize=json.dumps
        )
        await self._pool.start(self._session)
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
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def model(self) -> str:
        return self._model

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise BackendUnavailable("the vLLM backend is not started")
        return self._session

    async def list_models(self) -> list[str]:
        async with self._open("GET", "/v1/models") as response:
            body = await self._read_ok(response)
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
            async with self._open("GET", "/health") as response:
                await response.read()
                return response.status == 200
        except BackendError:
            return False

    # --- HTTP plumbing -----------------------------------------------------------------------------------

    def _open(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> _Opening:
        return _Opening(self, method, path, body, headers)

    async def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str] | None,
        *,
        track: bool = True,
    ) -> aiohttp.ClientResponse:
        """One call, to the upstream the routing key picks. `track`: the key has further calls, so a
        change of upstream between them counts as an affinity break."""
        key = _header(headers, self._routing_header)
        moves = 0

        async def attempt_once() -> aiohttp.ClientResponse:
            nonlocal moves
            upstream = self._pool.pick(key)
            try:
                response = await self.session.request(method, upstream.url + path, data=body, headers=headers)
            except aiohttp.ClientConnectorError:
                moves += self._pool.call_failed(upstream)
                raise
            self._pool.record_call(upstream, key, track=track)
            return response

        def stop(state: RetryCallState) -> bool:
            # A refused connection takes its upstream out of the pool and the next attempt goes to the next
            # upstream: such moves do not use up the retries. The first attempt was made before the loop.
            return state.attempt_number >= self._settings.retries + moves

        try:
            try:
                # The common case builds no retry machinery (it was 11-17% of the pass-through's CPU).
                return await attempt_once()
            except _RETRIED:
                if self._settings.retries + moves < 1:
                    raise
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(_RETRIED),
                stop=stop,
                wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    return await attempt_once()
        except LookupError as exc:
            raise BackendUnavailable("no vLLM upstream is known yet") from exc
        except aiohttp.ClientConnectorError as exc:
            raise BackendUnavailable("cannot connect to the vLLM server") from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise BackendTimeout("the vLLM server did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise BackendUnavailable("the connection to the vLLM server failed") from exc
        raise BackendUnavailable(
            "cannot connect to the vLLM server"
        )  # pragma: no cover - loop always returns

    @staticmethod
    async def _read_ok(response: aiohttp.ClientResponse) -> bytes:
        try:
            body = await response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise BackendTimeout("the vLLM server did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise BackendUnavailable("the connection to the vLLM server failed") from exc
        if response.status >= 500:
            raise (BackendUnavailable if response.status == 503 else BackendError)(
                f"vLLM answered {response.status}"
            )
        if response.status >= 400:
            raise BackendRejected(_upstream_message(body), status=response.status)
        return body

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
        async with self._open(
            "POST", "/v1/chat/completions", body, self._routing_headers(request)
        ) as response:
            raw = await self._read_ok(response)
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
        async with self._open(
            "POST", "/v1/chat/completions", body, self._routing_headers(request)
        ) as response:
            if response.status >= 400:
                await self._read_ok(response)
            finish: FinishReason | None = None
            usage: Usage | None = None
            async for data in iter_sse_data(response):
                if data == b"[DONE]":
                    break
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    raise BackendError("vLLM sent a malformed stream event") from exc
                if event.get("error"):
                    raise BackendError("vLLM reported an error mid-stream")
                if event.get("usage"):
                    usage = _usage(event["usage"])
                for choice in event.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content") or ""
                    if choice.get("finish_reason"):
                        finish = _finish(choice["finish_reason"])
                    if text:
                        yield CompletionChunk(text=text)
            else:
                # The loop ended without [DONE]: the stream was cut short, not finished.
                raise BackendError("the vLLM stream ended before [DONE]")
            yield CompletionChunk(text="", finish_reason=finish or "stop", usage=usage or Usage())

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

    async def forward(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> UpstreamCall:
        """Send the client's bytes unchanged; the caller relays status and body and must close the call.

        A pass-through request is one call: a fresh routing key (unless the caller gives one) lets a router
        or the pool spread such requests evenly."""
        sent = dict(headers or {})
        if _header(sent, self._routing_header) is None:
            sent[self._routing_header] = uuid.uuid4().hex
        response = await self._send("POST", path, body, sent, track=False)
        return UpstreamCall(response)


class _Opening:
    """`async with backend._open(...) as response`: sends with retries, releases the response after."""

    def __init__(
        self,
        backend: VllmBackend,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str] | None,
    ) -> None:
        self._args = (method, path, body, headers)
        self._backend = backend
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        self._response = await self._backend._send(*self._args)
        return self._response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._response is not None:
            self._response.release()


async def iter_sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The `data:` payloads of a server-sent event stream (multi-line data joined with newlines)."""
    lines: list[bytes] = []
    try:
        async for raw in response.content:
            line = raw.rstrip(b"\r\n")
            if not line:
                if lines:
                    yield b"\n".join(lines)
                    lines = []
            elif line.startswith(b"data:"):
                lines.append(line[5:].lstrip(b" "))
        if lines:
            yield b"\n".join(lines)
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise BackendTimeout("the vLLM stream stalled") from exc
    except aiohttp.ClientError as exc:
        raise BackendUnavailable("the vLLM stream broke off") from exc
