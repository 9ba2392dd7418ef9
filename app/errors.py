"""The gateway's error tree, rendered in one place as OpenAI error JSON.

    TwiceError                      500 server_error (never with a stack trace in the body)
    ├── InvalidRequest              400 invalid_request_error  (bad JSON, types, headers, fields)
    ├── Unauthorized                401 invalid_request_error  (missing or wrong API key)
    ├── PermissionDenied            403 invalid_request_error
    ├── NotFound                    404 invalid_request_error  (unknown model: code model_not_found)
    ├── Conflict                    409 invalid_request_error  (experiment changed meanwhile, feedback twice)
    ├── PayloadTooLarge             413 invalid_request_error
    ├── HeadersTooLarge             431 invalid_request_error  (too many or too large request headers)
    ├── RateLimited                 429 rate_limit_exceeded    (with Retry-After)
    ├── UpstreamError               502 upstream_error         (the backend answered garbage or an error)
    ├── UpstreamUnavailable         503 service_unavailable    (backend unreachable)
    ├── RedisUnavailable            503 service_unavailable    (Redis down: experiment changes, feedback)
    ├── LimiterUnavailable          503 service_unavailable    (rate limits on, their Redis down)
    └── UpstreamTimeout             504 timeout                (backend too slow)

Handlers raise; `install_error_handlers` maps every exception, including pydantic validation errors and
Starlette's routing errors, to `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from refiners.backend import BackendError, BackendRejected, BackendTimeout, BackendUnavailable

log = logging.getLogger("twice.errors")


class TwiceError(Exception):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(TwiceError):
    status_code = 400
    error_type = "invalid_request_error"


class Unauthorized(TwiceError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(TwiceError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"


class NotFound(TwiceError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class Conflict(TwiceError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLarge(TwiceError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class HeadersTooLarge(TwiceError):
    status_code = 431
    error_type = "invalid_request_error"
    default_code = "request_header_fields_too_large"


class RateLimited(TwiceError):
    status_code = 429
    error_type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"


class UpstreamError(TwiceError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "bad_gateway"


class UpstreamUnavailable(TwiceError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "backend_unavailable"


class RedisUnavailable(TwiceError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "redis_unavailable"


class LimiterUnavailable(TwiceError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "rate_limiter_unavailable"


class UpstreamTimeout(TwiceError):
    status_code = 504
    error_type = "timeout"
    default_code = "backend_timeout"


def from_backend_error(exc: BackendError) -> TwiceError:
    """The gateway error a backend failure becomes (the message never carries upstream internals)."""
    if isinstance(exc, BackendRejected):
        if exc.status == 404:
            return NotFound(exc.message, code="model_not_found")
        return InvalidRequest(exc.message, code="rejected_by_backend")
    if isinstance(exc, BackendTimeout):
        return UpstreamTimeout("The model backend did not answer in time.")
    if isinstance(exc, BackendUnavailable):
        return UpstreamUnavailable("The model backend is unavailable.")
    return UpstreamError("The model backend failed to answer.")


def as_twice_error(exc: BaseException) -> TwiceError:
    if isinstance(exc, TwiceError):
        return exc
    if isinstance(exc, BackendError):
        return from_backend_error(exc)
    return TwiceError("The server had an error while processing your request.")


def validation_error(exc: ValidationError | RequestValidationError) -> InvalidRequest:
    """The first validation problem, with its location as `param` (`messages.0.content`)."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg"))
    return InvalidRequest(message, param=param, code="invalid_value")


def error_response(error: TwiceError) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status_code,
        media_type="application/json",
        headers=error.headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    async def on_twice_error(_: Request, exc: Exception) -> Response:
        return error_response(as_twice_error(exc))

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return error_response(validation_error(exc))

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        error_class = {404: NotFound, 413: PayloadTooLarge}.get(exc.status_code, InvalidRequest)
        # Its headers too: a 405's `Allow` (which RFC 9110 requires), a 401's `WWW-Authenticate`.
        error = error_class(str(exc.detail), headers=dict(exc.headers or {}))
        response = error_response(error)
        response.status_code = exc.status_code
        return response

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc)
        return error_response(TwiceError("The server had an error while processing your request."))

    app.add_exception_handler(TwiceError, on_twice_error)
    app.add_exception_handler(BackendError, on_twice_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
