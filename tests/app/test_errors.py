"""The one error tree (app/errors.py): each error's HTTP status, type and code, the OpenAI error body
`{"error": {"message", "type", "param", "code"}}`, what backend failures and unexpected exceptions become, the
first validation problem as `param`, and the handlers `install_error_handlers` puts on an app.

The handlers are checked through a real FastAPI app served in-process by httpx's ASGI transport; the
gateway's own routes answering errors over HTTP are in tests/api/test_errors.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ValidationError

from app.errors import (
    Conflict,
    HeadersTooLarge,
    InvalidRequest,
    LimiterUnavailable,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    RedisUnavailable,
    TwiceError,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    as_twice_error,
    error_response,
    install_error_handlers,
    validation_error,
)
from refiners.backend import BackendError, BackendRejected, BackendTimeout, BackendUnavailable

GENERIC = "The server had an error while processing your request."


class Message(BaseModel):
    role: str
    content: str


class Body(BaseModel):
    model: str
    messages: list[Message]


@pytest.mark.parametrize(
    ("error_class", "status", "error_type", "code"),
    [
        (TwiceError, 500, "server_error", None),
        (InvalidRequest, 400, "invalid_request_error", None),
        (Unauthorized, 401, "invalid_request_error", "invalid_api_key"),
        (PermissionDenied, 403, "invalid_request_error", "permission_denied"),
        (NotFound, 404, "invalid_request_error", "not_found"),
        (Conflict, 409, "invalid_request_error", "conflict"),
        (PayloadTooLarge, 413, "invalid_request_error", "payload_too_large"),
        (HeadersTooLarge, 431, "invalid_request_error", "request_header_fields_too_large"),
        (RateLimited, 429, "rate_limit_exceeded", "rate_limit_exceeded"),
        (UpstreamError, 502, "upstream_error", "bad_gateway"),
        (UpstreamUnavailable, 503, "service_unavailable", "backend_unavailable"),
        (RedisUnavailable, 503, "service_unavailable", "redis_unavailable"),
        (LimiterUnavailable, 503, "service_unavailable", "rate_limiter_unavailable"),
        (UpstreamTimeout, 504, "timeout", "backend_timeout"),
    ],
)
def test_each_error_renders_its_status_and_an_openai_error_body(
    error_class: type[TwiceError], status: int, error_type: str, code: str | None
) -> None:
    response = error_response(error_class("what went wrong"))
    assert response.status_code == status
    assert response.media_type == "application/json"
    assert orjson.loads(bytes(response.body)) == {
        "error": {"message": "what went wrong", "type": error_type, "param": None, "code": code}
    }


def test_param_code_and_headers_are_the_errors_own() -> None:
    error = RateLimited("slow down", param="model", code="custom", headers={"Retry-After": "7"})
    response = error_response(error)
    assert response.headers["Retry-After"] == "7"
    assert orjson.loads(bytes(response.body))["error"] == {
        "message": "slow down",
        "type": "rate_limit_exceeded",
        "param": "model",
        "code": "custom",
    }
    assert str(error) == "slow down"
    # Headers are not shared between errors (no mutable default).
    assert NotFound("a").headers == {}
    NotFound("b").headers["X"] = "1"
    assert NotFound("c").headers == {}


@pytest.mark.parametrize(
    ("failure", "expected", "code", "message"),
    [
        (BackendRejected("too long for the context"), InvalidRequest, "rejected_by_backend", None),
        (BackendRejected("no such model", status=404), NotFound, "model_not_found", None),
        (BackendTimeout("read timed out at 10.0.0.3"), UpstreamTimeout, "backend_timeout", "in time"),
        (BackendUnavailable("connect 10.0.0.3:8001"), UpstreamUnavailable, "backend_unavailable", None),
        (BackendError("upstream said 500: trace..."), UpstreamError, "bad_gateway", None),
        (RuntimeError("secret internals"), TwiceError, None, GENERIC),
        (KeyError("x"), TwiceError, None, GENERIC),
    ],
)
def test_any_exception_becomes_one_error_of_the_tree(
    failure: BaseException, expected: type[TwiceError], code: str | None, message: str | None
) -> None:
    error = as_twice_error(failure)
    assert type(error) is expected
    assert error.code == code
    if isinstance(failure, BackendRejected):
        assert error.message == failure.message  # a rejection describes the request: shown as it is
    else:
        # Upstream addresses and internals never reach the client.
        assert "10.0.0.3" not in error.message
        assert "secret" not in error.message
        assert "trace" not in error.message
    if message is not None:
        assert message in error.message


def test_a_gateway_error_is_returned_as_it_is() -> None:
    error = Conflict("twice", param="request_id")
    assert as_twice_error(error) is error


def test_the_first_validation_problem_names_its_place_without_body() -> None:
    with pytest.raises(ValidationError) as invalid:
        Body.model_validate({"model": "m", "messages": [{"role": "user", "content": 3}], "extra": 1})
    error = validation_error(invalid.value)
    assert error.status_code == 400
    assert (error.param, error.code) == ("messages.0.content", "invalid_value")
    assert error.message.startswith("messages.0.content: ")
    assert "string" in error.message


def test_a_problem_without_a_place_keeps_its_message() -> None:
    class Positive(BaseModel):
        value: int

    try:
        Positive.model_validate("not an object")
    except ValidationError as exc:
        error = validation_error(exc)
    assert error.param is None
    assert error.message == "Input should be a valid dictionary or instance of Positive"


# --- the handlers on a real app ----------------------------------------------------------------------------


def error_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/conflict")
    async def conflict() -> None:
        raise RateLimited("too many", headers={"Retry-After": "3"})

    @app.get("/backend")
    async def backend() -> None:
        raise BackendTimeout("upstream 10.0.0.3 timed out")

    @app.get("/rejected")
    async def rejected() -> None:
        raise BackendRejected("prompt too long", status=404)

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("secret internals")

    @app.post("/chat")
    async def chat(body: Body) -> dict[str, str]:
        return {"model": body.model}

    @app.get("/inner-validation")
    async def inner_validation() -> None:
        Body.model_validate({"model": 1, "messages": []})

    @app.get("/too-large")
    async def too_large() -> None:
        raise HTTPException(status_code=413, detail="body too large")

    @app.get("/challenge")
    async def challenge() -> None:
        raise HTTPException(status_code=401, detail="who are you", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/teapot")
    async def teapot() -> None:
        raise HTTPException(status_code=418, detail="short and stout")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # The app answers an unexpected exception with its 500 and then re-raises it (Starlette's
    # ServerErrorMiddleware); raise_app_exceptions=False lets the client see the answer, as a server would.
    transport = httpx.ASGITransport(app=error_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as served:
        yield served


def error_of(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, object] = body["error"]
    return error


async def test_a_raised_gateway_error_is_answered_with_its_status_headers_and_body(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/conflict")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert error_of(response) == {
        "message": "too many",
        "type": "rate_limit_exceeded",
        "param": None,
        "code": "rate_limit_exceeded",
    }


async def test_a_backend_failure_is_answered_as_the_error_it_becomes(client: httpx.AsyncClient) -> None:
    timed_out = await client.get("/backend")
    assert timed_out.status_code == 504
    assert error_of(timed_out)["code"] == "backend_timeout"
    assert "10.0.0.3" not in timed_out.text
    rejected = await client.get("/rejected")
    assert rejected.status_code == 404
    assert error_of(rejected) == {
        "message": "prompt too long",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }


async def test_an_unexpected_exception_is_a_500_without_its_details_and_is_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="twice.errors"):
        response = await client.get("/crash")
    assert response.status_code == 500
    assert error_of(response) == {"message": GENERIC, "type": "server_error", "param": None, "code": None}
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    logged = [record for record in caplog.records if record.name == "twice.errors"]
    assert [record.getMessage() for record in logged] == ["unhandled error"]
    assert logged[0].exc_info is not None
    assert "secret internals" in str(logged[0].exc_info[1])


async def test_an_invalid_body_is_a_400_naming_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat", json={"model": "m", "messages": [{"role": "user"}]})
    assert response.status_code == 400
    error = error_of(response)
    assert (error["param"], error["code"], error["type"]) == (
        "messages.0.content",
        "invalid_value",
        "invalid_request_error",
    )
    assert str(error["message"]).startswith("messages.0.content: Field required")
    not_json = await client.post("/chat", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    assert error_of(not_json)["code"] == "invalid_value"
    assert (await client.post("/chat", json={"model": "m", "messages": []})).status_code == 200


async def test_a_validation_error_raised_inside_a_handler_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/inner-validation")
    assert response.status_code == 400
    assert error_of(response)["param"] == "model"


async def test_routing_errors_keep_their_status_in_the_same_body(client: httpx.AsyncClient) -> None:
    unknown = await client.get("/nowhere")
    assert unknown.status_code == 404
    assert error_of(unknown) == {
        "message": "Not Found",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }
    wrong_method = await client.delete("/chat")
    assert wrong_method.status_code == 405
    assert error_of(wrong_method)["type"] == "invalid_request_error"
    assert error_of(wrong_method)["message"] == "Method Not Allowed"
    too_large = await client.get("/too-large")
    assert too_large.status_code == 413
    assert error_of(too_large)["code"] == "payload_too_large"
    teapot = await client.get("/teapot")
    assert teapot.status_code == 418
    assert error_of(teapot) == {
        "message": "short and stout",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


async def test_routing_errors_keep_their_headers(client: httpx.AsyncClient) -> None:
    """A 405 must say which methods the resource allows (RFC 9110 section 15.5.6): Starlette puts them in
    `Allow`, and the rendered error keeps them, as it keeps any header an HTTPException carries."""
    wrong_method = await client.get("/chat")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    challenged = await client.get("/challenge")
    assert challenged.status_code == 401
    assert challenged.headers["www-authenticate"] == "Bearer"
    assert error_of(challenged)["message"] == "who are you"
