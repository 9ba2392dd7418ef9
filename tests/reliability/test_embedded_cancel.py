"""A client that leaves mid-stream on the embedded backend: the generation stops (the model runs on one
worker thread, so a following request is served at once only if the abandoned one stopped)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import EMBEDDED_MODEL
from tests.reliability.gateway import Gateway, launched

pytestmark = pytest.mark.model

LONG = {
    "model": EMBEDDED_MODEL,
    "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
    "max_tokens": 1000,
    "temperature": 0.0,
    "stream": True,
}
SHORT = {"model": EMBEDDED_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    # The psr case asks for 0 rounds, which the server must allow, so that the answer streams at once.
    env = {"TWICE_EMBEDDED__CONTEXTS": "1", "TWICE_PLAN__CLIENT_MAY_LOWER_ROUNDS": "true"}
    with launched(env) as served:
        yield served
        log = served.log()
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "plan", [{}, {"X-Twice-Strategy": "psr", "X-Twice-Rounds": "0"}], ids=["none", "psr"]
)
def test_leaving_mid_stream_stops_the_generation(gateway: Gateway, plan: dict[str, str]) -> None:
    fds_before = gateway.open_fds()
    for _ in range(2):
        with (
            httpx.Client(timeout=30) as client,
            client.stream("POST", f"{gateway.base}/v1/chat/completions", json=LONG, headers=plan) as r,
        ):
            assert r.status_code == 200
            received = b""
            for raw in r.iter_raw():  # until the model has produced text: the generation is under way
                received += raw
                if received.count(b'"content"') >= 3:
                    break
        started = time.monotonic()
        response = httpx.post(f"{gateway.base}/v1/chat/completions", json=SHORT, timeout=30)
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        # 1000 tokens at this model's ~100 tokens/s would hold the worker for about 10 s.
        assert elapsed < 2.5, f"the next request waited {elapsed:.1f}s: the abandoned generation ran on"
    assert gateway.open_fds() <= fds_before + 2
