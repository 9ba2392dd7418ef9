"""Upstream faults against a real gateway on the vllm backend: each gets its documented status, or a final SSE
error event and `data: [DONE]`, within the configured timeout, and the gateway serves the next request.

Every fault runs for a pass-through request (no strategy: vLLM's bytes relayed) and for a psr request (the
gateway's own calls). The upstream is tests/support/fault_upstream.py; the fault is chosen per request by a
marker in the user's message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.reliability.gateway import Gateway, launched, vllm_env
from tests.support.fault_upstream import (
    SECRET_DETAIL,
    FaultState,
    FaultUpstream,
    fault_marker,
    running_fault_upstream,
)
from tests.support.vllm_stub import free_port, running_stub

READ_TIMEOUT_S = 1.0
SLACK_S = 3.0
"""A fault must be answered within the read timeout plus this (process scheduling on 2 busy cores)."""
MODEL = "stub-model"
PLANS = {
    "none": {},
    # One checkpoint of 4 tokens, its verdict, then the rest streamed from the upstream unchecked.
    "psr": {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "1"},
}
GATEWAY_ENV = {
    "TWICE_PSR__CHUNK_TOKENS": "4",
    "TWICE_PSR__FINAL_CHECK": "false",
    "TWICE_PSR__TOP_LOGPROBS": "5",
    "TWICE_PLAN__CLIENT_MAY_LOWER_ROUNDS": "true",  # X-Twice-Rounds: 0 below streams at once
}


@pytest.fixture(scope="module")
def served_upstream() -> Iterator[tuple[str, FaultUpstream]]:
    with running_fault_upstream(FaultState(hang_s=4 * READ_TIMEOUT_S)) as served:
        yield served


@pytest.fixture(scope="module")
def upstream(served_upstream: tuple[str, FaultUpstream]) -> FaultUpstream:
    return served_upstream[1]


@pytest.fixture(scope="module")
def gateway(served_upstream: tuple[str, FaultUpstream]) -> Iterator[Gateway]:
    with launched(vllm_env(served_upstream[0], **GATEWAY_ENV)) as served:
        yield served
        log = served.log()
    assert "Traceback" not in log, log
    assert SECRET_DETAIL not in log


def body(text: str, *, stream: bool, max_tokens: int = 12) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def post(base: str, payload: dict[str, Any], plan: str, timeout: float = 30) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.post(f"{base}/v1/chat/completions", json=payload, headers=PLANS[plan], timeout=timeout)
    return response, time.monotonic() - started


def events(response: httpx.Response) -> list[bytes]:
    return [event for event in response.content.split(b"\n\n") if event.strip()]


def assert_error_status(response: httpx.Response, status: int, error_type: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert "Traceback" not in response.text
    assert SECRET_DETAIL not in response.text


def assert_ends_with_error_event(response: httpx.Response, error_type: str) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    received = events(response)
    assert received[-1] == b"data: [DONE]"
    last = orjson.loads(received[-2].removeprefix(b"data: "))
    assert set(last) == {"error"}, last
    assert last["error"]["type"] == error_type
    assert SECRET_DETAIL not in response.text
    assert b"Traceback" not in response.content


def assert_still_serving(gateway: Gateway, plan: str) -> None:
    for stream in (False, True):
        response, elapsed = post(gateway.base, body("a normal question", stream=stream), plan)
        assert response.status_code == 200, response.text
        assert elapsed < SLACK_S
        if stream:
            assert events(response)[-1] == b"data: [DONE]"
            assert b'"error"' not in response.content
        else:
            assert response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("plan", PLANS)
def test_hang_before_answering_is_504(gateway: Gateway, plan: str) -> None:
    response, elapsed = post(gateway.base, body(fault_marker("hang_before"), stream=False), plan)
    assert_error_status(response, 504, "timeout")
    assert elapsed < READ_TIMEOUT_S + SLACK_S
    assert_still_serving(gateway, plan)


def test_hang_before_a_pass_through_stream_is_504(gateway: Gateway) -> None:
    """No byte has gone to the client yet, so the status line can still say 504."""
    response, elapsed = post(gateway.base, body(fault_marker("hang_before"), stream=True), "none")
    assert_error_status(response, 504, "timeout")
    assert elapsed < READ_TIMEOUT_S + SLACK_S


def test_hang_before_a_psr_stream_ends_with_an_error_event(gateway: Gateway) -> None:
    """psr's stream has begun (the role chunk) before its first backend call: the error is a final event."""
    response, elapsed = post(gateway.base, body(fault_marker("hang_before"), stream=True), "psr")
    assert_ends_with_error_event(response, "timeout")
    assert elapsed < READ_TIMEOUT_S + SLACK_S
    assert_still_serving(gateway, "psr")


@pytest.mark.parametrize("plan", PLANS)
def test_hang_mid_stream_ends_with_an_error_event(gateway: Gateway, plan: str) -> None:
    response, elapsed = post(gateway.base, body(fault_marker("hang_mid_stream"), stream=True), plan)
    assert_ends_with_error_event(response, "timeout")
    assert elapsed < READ_TIMEOUT_S + SLACK_S
    assert_still_serving(gateway, plan)


def test_hang_mid_stream_of_a_psr_json_request_is_504(gateway: Gateway) -> None:
    """psr streams the unchecked rest from the upstream even for a JSON client: that stream stalls."""
    response, elapsed = post(gateway.base, body(fault_marker("hang_mid_stream"), stream=False), "psr")
    assert_error_status(response, 504, "timeout")
    assert elapsed < READ_TIMEOUT_S + SLACK_S


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_5xx_is_502_without_its_details(gateway: Gateway, plan: str, stream: bool) -> None:
    response, elapsed = post(gateway.base, body(fault_marker("status_500"), stream=stream), plan)
    if stream and plan == "psr":
        assert_ends_with_error_event(response, "upstream_error")
    else:
        assert_error_status(response, 502, "upstream_error")
    assert elapsed < SLACK_S
    assert_still_serving(gateway, plan)


def test_malformed_json_on_a_strategy_request_is_502(gateway: Gateway) -> None:
    response, elapsed = post(gateway.base, body(fault_marker("malformed_json"), stream=False), "psr")
    assert_error_status(response, 502, "upstream_error")
    assert elapsed < SLACK_S
    assert_still_serving(gateway, "psr")


def test_malformed_json_on_the_pass_through_is_relayed_unchanged(gateway: Gateway) -> None:
    """The pass-through never parses vLLM's answer (docs/fields.md): what it sent is what the client gets."""
    response, _ = post(gateway.base, body(fault_marker("malformed_json"), stream=False), "none")
    assert response.status_code == 200
    assert response.content == b'{"id": "x", "choices": [{"mess'
    assert_still_serving(gateway, "none")


@pytest.mark.parametrize("plan", PLANS)
def test_malformed_sse_ends_with_an_error_event(gateway: Gateway, plan: str) -> None:
    response, elapsed = post(gateway.base, body(fault_marker("malformed_sse"), stream=True), plan)
    assert_ends_with_error_event(response, "upstream_error")
    assert elapsed < SLACK_S
    assert_still_serving(gateway, plan)


@pytest.mark.parametrize("plan", PLANS)
def test_a_stream_cut_short_without_done_ends_with_an_error_event(gateway: Gateway, plan: str) -> None:
    response, _ = post(gateway.base, body(fault_marker("truncated_sse"), stream=True), plan)
    assert_ends_with_error_event(response, "upstream_error")


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("stream", [False, True])
def test_reset_before_answering(gateway: Gateway, plan: str, stream: bool) -> None:
    """A connection reset before any answer: the backend is unavailable (503), or the started psr stream
    ends with that error as its final event."""
    response, elapsed = post(gateway.base, body(fault_marker("reset_before"), stream=stream), plan)
    if stream and plan == "psr":
        assert_ends_with_error_event(response, "service_unavailable")
    else:
        assert_error_status(response, 503, "service_unavailable")
    assert elapsed < SLACK_S
    assert_still_serving(gateway, plan)


@pytest.mark.parametrize("plan", PLANS)
def test_reset_mid_stream_ends_with_an_error_event(gateway: Gateway, plan: str) -> None:
    response, elapsed = post(gateway.base, body(fault_marker("reset_mid_stream"), stream=True), plan)
    assert_ends_with_error_event(response, "service_unavailable")
    assert elapsed < SLACK_S
    assert_still_serving(gateway, plan)


@pytest.mark.parametrize("plan", PLANS)
def test_a_client_that_leaves_mid_stream_cancels_the_upstream_call(
    gateway: Gateway, upstream: FaultUpstream, plan: str
) -> None:
    """The client reads one event and closes: the gateway closes its upstream connection (the upstream sees
    it), keeps no connection or task behind (open descriptors come back), and serves the next request."""
    # A psr request spends its round on a JSON call first; rounds 0 streams from the upstream at once.
    headers = {**PLANS[plan], "X-Twice-Rounds": "0"} if plan == "psr" else {}
    fds_before = gateway.open_fds()
    for attempt in range(3):
        aborted = len(upstream.faults.aborted)
        payload = body(f"{fault_marker('slow_stream')} {attempt}", stream=True, max_tokens=64)
        with (
            httpx.Client(timeout=10) as client,
            client.stream("POST", f"{gateway.base}/v1/chat/completions", json=payload, headers=headers) as r,
        ):
            assert r.status_code == 200
            received = b""
            for raw in r.iter_raw():  # until the upstream's first token: its call is under way
                received += raw
                if b" t0" in received:
                    break
        deadline = time.monotonic() + 3
        while len(upstream.faults.aborted) == aborted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert upstream.faults.aborted[aborted:] == ["slow_stream"]
    assert "slow_stream" not in upstream.faults.completed
    assert_still_serving(gateway, plan)
    time.sleep(0.5)
    assert gateway.open_fds() <= fds_before + 2


def test_a_client_that_leaves_while_psr_waits_cancels_the_upstream_call(
    gateway: Gateway, upstream: FaultUpstream
) -> None:
    """psr's first chunk is a JSON call that hangs; the client leaves: that call is cancelled too."""
    aborted = len(upstream.faults.aborted)
    payload = body(fault_marker("hang_before"), stream=True)
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{gateway.base}/v1/chat/completions", json=payload, headers=PLANS["psr"]) as r,
    ):
        assert r.status_code == 200
        next(r.iter_raw())  # the role chunk
    deadline = time.monotonic() + READ_TIMEOUT_S / 2
    while len(upstream.faults.aborted) == aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.faults.aborted[aborted:] == ["hang_before"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_refused_connection_is_503_and_the_upstream_is_used_again_when_back(stream: bool) -> None:
    port = free_port()
    with launched(vllm_env(f"http://127.0.0.1:{port}", **GATEWAY_ENV)) as gateway:
        for plan in PLANS:
            response, elapsed = post(gateway.base, body("hi", stream=stream), plan)
            if stream and plan == "psr":
                assert_ends_with_error_event(response, "service_unavailable")
            else:
                assert_error_status(response, 503, "service_unavailable")
            assert elapsed < READ_TIMEOUT_S + SLACK_S
        with running_stub(port=port):
            for plan in PLANS:
                assert_still_serving(gateway, plan)
        assert "Traceback" not in gateway.log()
