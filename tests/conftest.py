"""Shared fixtures: the real embedded model, a vLLM stand-in on loopback, real gateway processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from app.backends.embedded import EmbeddedBackend
from app.backends.vllm import VllmBackend
from app.settings import EmbeddedSettings, VllmSettings
from tests.support.servers import running_gateway
from tests.support.vllm_stub import StubState, VllmStub, running_stub

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""The tests' embedded model: fast, so most tests use it (it cannot judge itself: psr's safety is tested on
the served default in tests/api/test_capable_model.py). Gateways started by the tests inherit it."""
os.environ.setdefault("TWICE_EMBEDDED__MODEL", EMBEDDED_MODEL)


@pytest.fixture(scope="session")
def stub() -> Iterator[tuple[str, VllmStub]]:
    with running_stub(StubState()) as served:
        yield served


@pytest.fixture(scope="session")
def stub_url(stub: tuple[str, VllmStub]) -> str:
    return stub[0]


@pytest.fixture(scope="session")
async def embedded_backend() -> AsyncIterator[EmbeddedBackend]:
    backend = EmbeddedBackend(EmbeddedSettings(model=EMBEDDED_MODEL))
    await backend.start()
    yield backend
    await backend.close()


@pytest.fixture(scope="session")
async def vllm_backend(stub_url: str) -> AsyncIterator[VllmBackend]:
    backend = VllmBackend(VllmSettings(upstream=stub_url))
    await backend.start()
    yield backend
    await backend.close()


@pytest.fixture(scope="session")
def gateway() -> Iterator[str]:
    """`twice serve` on the embedded default, as the README starts it."""
    with running_gateway() as base:
        yield base


@pytest.fixture(scope="session")
def vllm_gateway(stub_url: str) -> Iterator[str]:
    with running_gateway("--backend", "vllm", "--upstream", stub_url) as base:
        yield base


# Strategy settings small enough for end-to-end runs on 2 CPU cores; the mechanics are the same.
SMALL_STRATEGIES = {
    "TWICE_SELF_QUESTION__QUESTIONS": "2",
    "TWICE_SELF_QUESTION__ANSWER_TOKENS": "24",
    "TWICE_SELF_REFINE__FEEDBACK_TOKENS": "32",
    "TWICE_ROLE_PLAY__ROLE_TOKENS": "32",
    "TWICE_PSR__CHUNK_TOKENS": "8",
}


@pytest.fixture(scope="session")
def strategy_gateway() -> Iterator[str]:
    """`twice serve` on the embedded model with small strategy budgets, honouring each request's rounds
    exactly: the strategy tests check psr at fixed budgets (tests/api/test_rounds_auto.py the policy)."""
    with running_gateway(env={**SMALL_STRATEGIES, "TWICE_PLAN__CLIENT_MAY_LOWER_ROUNDS": "true"}) as base:
        yield base
