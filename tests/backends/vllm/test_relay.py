"""The pass-through call (`VllmBackend.forward`, app/backends/vllm/relay.py) against the loopback fault
upstream (tests/support/fault_upstream.py): what it relays, and each failure as the twice error it means."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest

from app.backends.vllm import Relayed, StreamCut, VllmBackend
from app.settings import VllmSettings
from refiners.backend import BackendError, BackendTimeout, BackendUnavailable
from tests.support.fault_upstream import (
    SECRET_DETAIL,
    FaultState,
    FaultUpstream,
    fault_marker,
    running_fault_upstream,
)
from tests.support.loopback import free_port

PATH = "/v1/chat/completions"
READ_TIMEOUT_S = 0.5
NOT_RELAYED = {"content-length", "transfer-encoding", "connection", "date", "server"}


def chat(text: str, *, stream: bool, model: str = "stub-model") -> bytes:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, FaultUpstream]]:
    with running_fault_upstream(FaultState(hang_s=4 * READ_TIMEOUT_S)) as upstream:
        yield upstream


@pytest.fixture(scope="module")
async def backend(served: tuple[str, FaultUpstream]) -> AsyncIterator[VllmBackend]:
    backend = VllmBackend(VllmSettings(upstream=served[0], model="stub-model", read_timeout_s=READ_TIMEOUT_S))
    await backend.start()
    yield backend
    await backend.close()


async def direct(served: tuple[str, FaultUpstream], body: bytes) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(served[0] + PATH, content=body, headers={"Content-Type": "application/json"})


async def batches_of(relayed: Relayed, into: list[bytes] | None = None) -> list[bytes]:
    """The events' batches, also appended to `into` as they come (what arrived before a failure)."""
    assert relayed.events is not None
    received = [] if into is None else into
    async for batch in relayed.events:
        received.append(batch)
    return received


async def test_a_stream_comes_as_whole_events_byte_for_byte(
    backend: VllmBackend, served: tuple[str, FaultUpstream]
) -> None:
    body = chat("a streamed story", stream=True)
    relayed = await backend.forward(PATH, body, stream=True)
    assert (relayed.status, relayed.body) == (200, b"")
    batches = await batches_of(relayed)
    assert all(batch.endswith(b"\n\n") for batch in batches)
    sent = (await direct(served, body)).content
    assert b"".join(batches) == sent
    assert sent.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("stream", [False, True])
async def test_hop_by_hop_headers_are_dropped_and_the_others_kept(
    backend: VllmBackend, served: tuple[str, FaultUpstream], stream: bool
) -> None:
    body = chat("headers", stream=stream)
    relayed = await backend.forward(PATH, body, stream=stream)
    if relayed.events is not None:
        await batches_of(relayed)
    sent = await direct(served, body)
    assert {"date", "server"} <= set(sent.headers)
    assert {"content-length", "transfer-encoding"} & set(sent.headers)
    assert not {name.lower() for name, _ in relayed.headers} & NOT_RELAYED
    content_type = "text/event-stream" if stream else "application/json"
    (sent_type,) = [value for name, value in relayed.headers if name.lower() == "content-type"]
    assert sent_type.startswith(content_type)


async def test_a_json_answer_is_read_whole(backend: VllmBackend, served: tuple[str, FaultUpstream]) -> None:
    body = chat("a whole answer", stream=False)
    relayed = await backend.forward(PATH, body, stream=False)
    assert relayed.events is None
    assert relayed.status == 200
    assert relayed.body == (await direct(served, body)).content


async def test_a_stream_not_asked_for_is_read_whole(backend: VllmBackend) -> None:
    relayed = await backend.forward(PATH, chat("stream anyway", stream=True), stream=False)
    assert relayed.events is None
    assert relayed.body.startswith(b"data: ")
    assert relayed.body.endswith(b"data: [DONE]\n\n")


async def test_an_error_answer_to_a_stream_is_read_whole(backend: VllmBackend) -> None:
    relayed = await backend.forward(PATH, chat("hi", stream=True, model="other-model"), stream=True)
    assert relayed.events is None
    assert relayed.status == 404
    assert orjson.loads(relayed.body)["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_5xx_body_is_never_read(backend: VllmBackend, stream: bool) -> None:
    relayed = await backend.forward(PATH, chat(fault_marker("status_500"), stream=stream), stream=stream)
    assert (relayed.status, relayed.body, relayed.events) == (500, b"", None)
    assert SECRET_DETAIL not in repr(relayed)


async def test_malformed_json_is_relayed_unparsed(backend: VllmBackend) -> None:
    relayed = await backend.forward(PATH, chat(fault_marker("malformed_json"), stream=False), stream=False)
    assert relayed.body == b'{"id": "x", "choices": [{"mess'


@pytest.mark.parametrize(
    ("fault", "whole", "cut"),
    [
        ("truncated_sse", 2, r"ended the stream before \[DONE\]"),
        ("malformed_sse", 3, "ended the stream inside an event"),
    ],
)
async def test_a_stream_cut_short_gives_its_whole_events_then_stream_cut(
    backend: VllmBackend, fault: str, whole: int, cut: str
) -> None:
    relayed = await backend.forward(PATH, chat(fault_marker(fault), stream=True), stream=True)
    batches: list[bytes] = []
    with pytest.raises(StreamCut, match=cut):
        await batches_of(relayed, into=batches)
    received = b"".join(batches)
    assert received.startswith(b'data: {"id":"chatcmpl-fault"')
    assert received.count(b"\n\n") == whole
    assert received.endswith(b"\n\n")


@pytest.mark.parametrize(
    ("fault", "expected"), [("reset_mid_stream", BackendUnavailable), ("hang_mid_stream", BackendTimeout)]
)
async def test_a_stream_broken_mid_way_raises_the_twice_error(
    backend: VllmBackend, fault: str, expected: type[BackendError]
) -> None:
    relayed = await backend.forward(PATH, chat(fault_marker(fault), stream=True), stream=True)
    with pytest.raises(BackendError) as raised:
        await batches_of(relayed)
    assert type(raised.value) is expected


@pytest.mark.parametrize(
    ("fault", "expected"), [("reset_before", BackendUnavailable), ("hang_before", BackendTimeout)]
)
async def test_a_call_that_gets_no_answer_raises_the_twice_error(
    backend: VllmBackend, fault: str, expected: type[BackendError]
) -> None:
    with pytest.raises(BackendError) as raised:
        await backend.forward(PATH, chat(fault_marker(fault), stream=True), stream=True)
    assert type(raised.value) is expected


async def test_a_refused_connection_is_backend_unavailable() -> None:
    backend = VllmBackend(
        VllmSettings(upstream=f"http://127.0.0.1:{free_port()}", model="stub-model", retries=0)
    )
    await backend.start()
    try:
        with pytest.raises(BackendUnavailable, match="cannot connect"):
            await backend.forward(PATH, chat("hi", stream=False), stream=False)
    finally:
        await backend.close()


async def test_closing_the_events_early_closes_the_upstream_call(
    backend: VllmBackend, served: tuple[str, FaultUpstream]
) -> None:
    faults = served[1].faults
    aborted = len(faults.aborted)
    relayed = await backend.forward(PATH, chat(fault_marker("slow_stream"), stream=True), stream=True)
    assert relayed.events is not None
    assert b" t0" in await anext(relayed.events)
    await relayed.events.aclose()
    # An earlier test's aborted call may be recorded late, so look for this one among the new entries.
    for _ in range(100):
        if "slow_stream" in faults.aborted[aborted:]:
            break
        await asyncio.sleep(0.02)
    assert "slow_stream" in faults.aborted[aborted:]
