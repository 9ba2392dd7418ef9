"""Graceful shutdown: on SIGTERM the gateway stops accepting, lets in-flight streams finish within the grace
period (`TWICE_SERVER__GRACEFUL_SHUTDOWN_S`; uvicorn's `timeout_graceful_shutdown`), then exits 0."""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from app.settings import ServerSettings
from tests.reliability.gateway import Gateway, launched, vllm_env
from tests.support.fault_upstream import FaultState, FaultUpstream, fault_marker, running_fault_upstream

PAYLOAD = {
    "model": "stub-model",
    "messages": [{"role": "user", "content": fault_marker("slow_stream")}],
    "max_tokens": 16,
    "stream": True,
}


@pytest.fixture
def slow_upstream() -> Iterator[tuple[str, FaultUpstream]]:
    with running_fault_upstream(FaultState(slow_events=20, slow_delay_s=0.1)) as served:
        yield served


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def stream_then_terminate(gateway: Gateway) -> tuple[bytes, float, bool]:
    """Open a slow stream, SIGTERM the gateway after its first event, and read the stream to its end.
    Returns what the stream received, when the process exited (seconds after SIGTERM), and whether new
    connections were refused while the stream was still running."""
    received = bytearray()
    first = threading.Event()
    done = threading.Event()

    def read() -> None:
        try:
            with (
                httpx.Client(timeout=30) as client,
                client.stream("POST", f"{gateway.base}/v1/chat/completions", json=PAYLOAD) as response,
            ):
                for raw in response.iter_raw():
                    received.extend(raw)
                    first.set()
        except httpx.RemoteProtocolError:
            pass  # the server cut the stream at the end of its grace period; `received` shows where
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first.wait(10)
    signalled = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    refusing = refused(gateway.port) and not done.is_set()
    gateway.process.wait(ServerSettings().graceful_shutdown_s + 10)
    exited = time.monotonic() - signalled
    reader.join(10)
    return bytes(received), exited, refusing


def test_sigterm_finishes_the_stream_refuses_new_connections_and_exits_0(
    slow_upstream: tuple[str, FaultUpstream],
) -> None:
    with launched(vllm_env(slow_upstream[0], TWICE_VLLM__READ_TIMEOUT_S="5")) as gateway:
        received, exited, refusing = stream_then_terminate(gateway)
        assert gateway.process.returncode == 0
        log = gateway.log()
    assert refusing
    assert received.endswith(b"data: [DONE]\n\n")
    assert b'"error"' not in received
    assert received.count(b" t") == 20
    assert exited < ServerSettings().graceful_shutdown_s
    assert "Traceback" not in log


def test_a_stream_longer_than_the_grace_period_is_cut_at_its_end(
    slow_upstream: tuple[str, FaultUpstream],
) -> None:
    slow_upstream[1].faults.slow_delay_s = 0.5  # 10 s of stream against 1 s of grace
    env = vllm_env(slow_upstream[0], TWICE_VLLM__READ_TIMEOUT_S="5", TWICE_SERVER__GRACEFUL_SHUTDOWN_S="1")
    with launched(env) as gateway:
        _, exited, refusing = stream_then_terminate(gateway)
    assert refusing
    assert exited < 1 + 3
