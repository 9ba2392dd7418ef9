"""The one map from aiohttp's and asyncio's failures to the twice errors (`refiners.backend`) they mean.

Every connect, read and write of the vLLM client happens inside `with backend_errors:`, so no aiohttp
exception leaves the package.
"""

from __future__ import annotations

from types import TracebackType

import aiohttp

from refiners.backend import BackendError, BackendTimeout, BackendUnavailable

__all__ = ["FAILURES", "as_backend_error", "backend_errors"]

FAILURES = (aiohttp.ClientError, TimeoutError)
"""What talking to vLLM can raise: aiohttp's client errors, and timeouts (aiohttp.ServerTimeoutError is
one)."""


def as_backend_error(failure: aiohttp.ClientError | TimeoutError) -> BackendError:
    if isinstance(failure, aiohttp.ClientConnectorError):
        return BackendUnavailable("cannot connect to the vLLM server")
    if isinstance(failure, TimeoutError):
        return BackendTimeout("the vLLM server did not answer in time")
    return BackendUnavailable("the connection to the vLLM server failed")


class _BackendErrors:
    """`with backend_errors:` raises a failure inside the block as the twice error it means. One stateless
    instance serves every block: nothing is built per use on the pass-through path."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, FAILURES):
            raise as_backend_error(exc) from exc


backend_errors = _BackendErrors()
