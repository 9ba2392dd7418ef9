"""The header bounds at their edges, with the operator's own limits (tests/api/test_errors.py: over HTTP)."""

from __future__ import annotations

import pytest

from app.header_limits import header_problem
from app.settings import LimitSettings, Settings

LIMITS = LimitSettings(max_header_bytes=2_000, max_header_field_bytes=500, max_headers=10)


def headers(*sizes: int) -> list[tuple[bytes, bytes]]:
    """One header per size, each `size` bytes of name and value together."""
    return [(f"x-{i:03d}".encode(), b"v" * (size - 5)) for i, size in enumerate(sizes)]


def test_a_field_at_its_limit_passes_and_one_byte_more_does_not() -> None:
    assert header_problem(headers(500), LIMITS) is None
    problem = header_problem(headers(501), LIMITS)
    assert problem is not None
    assert "'x-000'" in problem
    assert "500 bytes" in problem


def test_the_total_counts_every_header() -> None:
    assert header_problem(headers(500, 500, 500, 500), LIMITS) is None
    problem = header_problem(headers(500, 500, 500, 500, 1), LIMITS) or ""
    assert "2000 bytes in all" in problem


def test_the_count_is_bounded() -> None:
    assert header_problem(headers(*[10] * 10), LIMITS) is None
    assert "Too many request headers: 11 > 10" in (header_problem(headers(*[10] * 11), LIMITS) or "")


def test_limits_are_settable_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWICE_LIMITS__MAX_HEADERS", "20")
    monkeypatch.setenv("TWICE_LIMITS__MAX_HEADER_FIELD_BYTES", "1024")
    limits = Settings().limits
    assert (limits.max_headers, limits.max_header_field_bytes) == (20, 1024)
