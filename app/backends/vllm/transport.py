"""HTTP to vLLM: one pooled aiohttp session per worker, the upstream the pool picks for each call, retries.

aiohttp rather than httpx: on the pass-through path httpx's pool scans its connections on every request and
measured about 6x slower at concurrency 32 (docs/benchmarks.md). Retries (tenacity) happen only when the
connection could not be opened, or the server closed it before any answer (a pooled keep-alive connection to a
replica that went away); an answer that has started is never asked for again.

Calls go to the upstream app/upstreams.py picks by the request's routing key (docs/scaleout.md). Every failure
leaves as a twice error (errors.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from types import TracebackType

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from app.backends.vllm.errors import FAILURES, backend_errors
from app.backends.vllm.sse import EventSplitter
from app.settings import VllmSettings
from app.upstreams import UpstreamPool
from refiners.backend import BackendUnavailable

__all__ = ["Transport", "event_stream", "header_value", "read_body"]

# Raised before any answer arrived: could not connect (ClientConnectorError, an OSError subclass), or the
# connection broke as the request went out or before vLLM answered (a pooled connection a replica closed).
_RETRIED = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)


def header_value(headers: Mapping[str, str] | None, name: str) -> str | None:
    """`name`'s value in `headers`, whatever the case of either."""
    if headers:
        lowered = name.lower()
        for key, value in headers.items():
            if key.lower() == lowered:
                return value
    return None


async def read_body(response: aiohttp.ClientResponse) -> bytes:
    with backend_errors:
        return await response.read()


async def event_stream(response: aiohttp.ClientResponse) -> AsyncGenerator[bytes, None]:
    """`response`'s whole server-sent events as they arrive (those of each chunk as one bytes); a stream cut
    short raises `sse.StreamCut`. Releases the response once the events end or the generator is closed."""
    splitter = EventSplitter()
    try:
        with backend_errors:
            async for chunk in response.content.iter_any():
                if events := splitter.feed(chunk):
                    yield events
        splitter.finish()
    finally:
        response.release()


class Transport:
    def __init__(self, settings: VllmSettings, pool: UpstreamPool) -> None:
        self._settings = settings
        self._pool = pool
        self._routing_header = settings.routing_header
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Content-Type": "application/json"}
        if settings.api_key is not None:
            self._headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._settings.connect_timeout_s, sock_read=self._settings.read_timeout_s
        )
        connector = aiohttp.TCPConnector(limit=self._settings.max_connections, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, headers=self._headers, json_serialize=json.dumps
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def _live_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise BackendUnavailable("the vLLM backend is not started")
        return self._session

    async def healthy(self, url: str) -> bool:
        """Whether the upstream at `url` answers `GET /health` with 200 within `health_timeout_s` (the
        pool's health check)."""
        timeout = aiohttp.ClientTimeout(total=self._settings.health_timeout_s)
        try:
            async with self._live_session.get(url + "/health", timeout=timeout) as response:
                await response.read()
                return response.status == 200
        except FAILURES:
            return False

    def open(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> _Opening:
        """`async with transport.open(...) as response`: `send`, then release the response."""
        return _Opening(self, method, path, body, headers)

    async def send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str] | None,
        *,
        track: bool = True,
    ) -> aiohttp.ClientResponse:
        """One call, to the upstream the routing key picks; the caller releases the response. `track`: the
        key has further calls, so a change of upstream between them counts as an affinity break."""
        key = header_value(headers, self._routing_header)
        moves = 0

        async def attempt_once() -> aiohttp.ClientResponse:
            nonlocal moves
            upstream = self._pool.pick(key)
            try:
                response = await self._live_session.request(
                    method, upstream.url + path, data=body, headers=headers
                )
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
            with backend_errors:
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
        raise AssertionError("the retry loop returns or raises")  # pragma: no cover


class _Opening:
    def __init__(
        self,
        transport: Transport,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str] | None,
    ) -> None:
        self._args = (method, path, body, headers)
        self._transport = transport
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        self._response = await self._transport.send(*self._args)
        return self._response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._response is not None:
            self._response.release()
