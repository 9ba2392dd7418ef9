"""The vLLM client's one error map (app/backends/vllm/errors.py): each aiohttp failure to its twice error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest

from app.backends.vllm.errors import as_backend_error, backend_errors
from refiners.backend import BackendError, BackendRejected, BackendTimeout, BackendUnavailable
from tests.support.loopback import free_port

CANNOT_CONNECT = "cannot connect to the vLLM server"
TOO_LATE = "the vLLM server did not answer in time"
BROKE = "the connection to the vLLM server failed"

FAILURES: list[tuple[Callable[[], aiohttp.ClientError | TimeoutError], type[BackendError], str]] = [
    (aiohttp.ConnectionTimeoutError, BackendTimeout, TOO_LATE),
    (aiohttp.SocketTimeoutError, BackendTimeout, TOO_LATE),
    (aiohttp.ServerTimeoutError, BackendTimeout, TOO_LATE),
    (TimeoutError, BackendTimeout, TOO_LATE),
    (aiohttp.ServerDisconnectedError, BackendUnavailable, BROKE),
    (aiohttp.ClientOSError, BackendUnavailable, BROKE),
    (aiohttp.ClientConnectionResetError, BackendUnavailable, BROKE),
    (lambda: aiohttp.ClientPayloadError("Response payload is not completed"), BackendUnavailable, BROKE),
    (aiohttp.ClientConnectionError, BackendUnavailable, BROKE),
    (aiohttp.ClientError, BackendUnavailable, BROKE),
]


async def refused_connection() -> aiohttp.ClientConnectorError:
    """A real ClientConnectorError: nothing listens on the port."""
    async with aiohttp.ClientSession() as session:
        try:
            await session.get(f"http://127.0.0.1:{free_port()}/health")
        except aiohttp.ClientConnectorError as exc:
            return exc
    raise AssertionError("a connection to a closed port succeeded")


@pytest.mark.parametrize(("failure", "expected", "message"), FAILURES)
def test_each_failure_maps_to_its_twice_error(
    failure: Callable[[], aiohttp.ClientError | TimeoutError], expected: type[BackendError], message: str
) -> None:
    error = as_backend_error(failure())
    assert type(error) is expected
    assert str(error) == message


async def test_a_refused_connection_is_unavailable_not_a_broken_connection() -> None:
    error = as_backend_error(await refused_connection())
    assert type(error) is BackendUnavailable
    assert str(error) == CANNOT_CONNECT


@pytest.mark.parametrize(("failure", "expected", "message"), FAILURES)
def test_the_block_raises_the_mapped_error_caused_by_the_failure(
    failure: Callable[[], aiohttp.ClientError | TimeoutError], expected: type[BackendError], message: str
) -> None:
    original = failure()
    with pytest.raises(expected, match=message) as raised, backend_errors:
        raise original
    assert raised.value.__cause__ is original


@pytest.mark.parametrize(
    "other",
    [ValueError("bad value"), KeyError("choices"), BackendRejected("too long"), asyncio.CancelledError()],
)
def test_the_block_lets_everything_else_through_unchanged(other: BaseException) -> None:
    with pytest.raises(type(other)) as raised, backend_errors:
        raise other
    assert raised.value is other


def test_the_block_is_transparent_without_a_failure() -> None:
    ran = []
    with backend_errors:
        ran.append(True)
    with backend_errors:
        ran.append(True)
    assert ran == [True, True]
