"""Waiting for what happens after a response: background writes, health changes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    probe: Callable[[], T | None], timeout: float = 5.0, interval: float = 0.05
) -> tuple[T, float]:
    """The first truthy value `probe` returns, and how many seconds it took; fails after `timeout`."""
    started = time.monotonic()
    while True:
        value = probe()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
