"""Every documented error: OpenAI error JSON, the right status, never a 500 or a hang."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import EMBEDDED_MODEL

pytestmark = pytest.mark.model

GOOD = {"model": EMBEDDED_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def post(gateway: str, body: bytes | dict[str, Any], **kwargs: Any) -> httpx.Response:
    url = f"{gateway}/v1/chat/completions"
    if isinstance(body, dict):
        return httpx.post(url, json=body, timeout=30, **kwargs)
    return httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30, **kwargs)


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert "Traceback" not in response.text
    if param is not None:
        assert error["param"] == param
    return dict(error)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1, 2]", None),
        ({"model": EMBEDDED_MODEL}, "messages"),
        ({"model": EMBEDDED_MODEL, "messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({**GOOD, "temperature": "hot"}, "temperature"),
        ({**GOOD, "temperature": 5}, "temperature"),
        ({**GOOD, "max_tokens": 0}, "max_tokens"),
        ({**GOOD, "max_tokens": 10**9}, "max_tokens"),
        ({**GOOD, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({**GOOD, "messages": [{"role": "user"}]}, "messages.0.content"),
        ({**GOOD, "messages": [{"role": "user", "content": 12}]}, None),
        ({**GOOD, "n": 2}, "n"),
        ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**GOOD, "stream": "yes"}, "stream"),
    ],
)
def test_bad_requests_get_400(gateway: str, body: bytes | dict[str, Any], param: str | None) -> None:
    error = assert_error(post(gateway, body), 400, param)
    assert error["type"] == "invalid_request_error"


def test_unknown_model_is_404(gateway: str) -> None:
    error = assert_error(post(gateway, {**GOOD, "model": "gpt-17"}), 404, "model")
    assert error["code"] == "model_not_found"


def test_oversized_body_is_413(gateway: str) -> None:
    huge = {**GOOD, "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    assert_error(post(gateway, huge), 413)


def test_oversized_body_without_content_length_is_413(gateway: str) -> None:
    def chunks() -> Any:
        for _ in range(40):
            yield b" " * 65536

    response = httpx.post(f"{gateway}/v1/chat/completions", content=chunks(), timeout=30)
    assert_error(response, 413)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-huge": "v" * 100_000},  # one header past its limit (8 KiB)
        {f"x-part-{i}": "v" * 4_000 for i in range(10)},  # each within, 40 KB in all (32 KiB)
        {f"x-many-{i}": "1" for i in range(150)},  # more headers than 100
    ],
    ids=["one-large", "large-total", "too-many"],
)
def test_oversized_headers_are_431_on_every_route(gateway: str, headers: dict[str, str]) -> None:
    error = assert_error(post(gateway, GOOD, headers=headers), 431)
    assert error["code"] == "request_header_fields_too_large"
    assert_error(httpx.get(f"{gateway}/health", headers=headers), 431)


def test_headers_within_the_limits_are_served(gateway: str) -> None:
    headers = {f"x-part-{i}": "v" * 3_000 for i in range(8)}  # 24 KB, 8 headers: under every limit
    assert post(gateway, GOOD, headers=headers).status_code == 200


def test_prompt_longer_than_context_is_400(gateway: str) -> None:
    long = {**GOOD, "messages": [{"role": "user", "content": "word " * 5000}]}
    error = assert_error(post(gateway, long), 400)
    assert "context" in error["message"]


def test_unknown_route_and_method(gateway: str) -> None:
    assert_error(httpx.get(f"{gateway}/v1/nothing-here"), 404)
    assert_error(httpx.get(f"{gateway}/v1/chat/completions"), 405)


def test_openai_client_raises_typed_errors(gateway: str) -> None:
    with openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=EMBEDDED_MODEL, messages=[])


def test_gateway_still_serves_after_errors(gateway: str) -> None:
    for _ in range(3):
        post(gateway, b"{broken")
    response = post(gateway, GOOD)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] is not None


def test_health_ready_metrics(gateway: str) -> None:
    assert httpx.get(f"{gateway}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway}/ready")
    assert ready.status_code == 200
    assert ready.json()["backend"]["ready"] is True
    post(gateway, GOOD)
    post(gateway, b"{broken")
    metrics = httpx.get(f"{gateway}/metrics").text
    assert 'twice_requests_total{outcome="ok",stream="false",variant="none"}' in metrics
    ok = [
        line
        for line in metrics.splitlines()
        if line.startswith('twice_requests_total{outcome="client_error",stream="false",variant="none"}')
    ]
    assert ok
    assert float(ok[0].split()[-1]) >= 1
    assert "twice_request_duration_seconds_bucket" in metrics
    assert "twice_tokens_total" in metrics
