"""Retries: only 429, 5xx and connection errors are retried, and each attempt reaches the server.

The server here is a scripted fault fake on loopback: a real model server cannot be made to answer 429 or
503 on cue, so this one answers each prompt with the statuses its script lists, then 200.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
from aiohttp import web
from openai import AsyncOpenAI

from evaluation.client import RequestSettings, complete
from evaluation.datasets import Item, Message
from evaluation.plans import parse_plan
from tests.support.loopback import free_port, serving_app

SCRIPT: dict[str, list[int]] = {
    "flaky": [503],
    "limited": [429, 429],
    "bad": [400, 400, 400],
    "down": [500, 500, 500, 500],
}


class FaultServer:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.headers: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        attempt = self.hits[prompt]
        self.hits[prompt] += 1
        self.headers.append(
            {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-twice-")}
        )
        statuses = SCRIPT.get(prompt, [])
        if attempt < len(statuses):
            error = {"message": f"scripted {statuses[attempt]}", "type": "x", "param": None, "code": None}
            return web.json_response({"error": error}, status=statuses[attempt])
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            },
            headers={"X-Twice-Strategy-Applied": "none", "X-Other": "1"},
        )


@contextmanager
def serving(server: FaultServer) -> Iterator[str]:
    with serving_app(server.app) as url:
        yield f"{url}/v1"


@pytest.fixture
def fault_server() -> Iterator[tuple[str, FaultServer]]:
    server = FaultServer()
    with serving(server) as url:
        yield url, server


@pytest.fixture
async def client(fault_server: tuple[str, FaultServer]) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=fault_server[0], api_key="k", max_retries=0) as client:
        yield client


def item(prompt: str) -> Item:
    return Item("t", prompt, (Message("user", prompt),), "benign")


SETTINGS = RequestSettings(model="m", max_tokens=4, retries=2)
PLAN = parse_plan("psr=X-Twice-Strategy:psr,X-Twice-Rounds:2")


async def test_transient_statuses_are_retried_until_success(
    client: AsyncOpenAI, fault_server: tuple[str, FaultServer]
) -> None:
    server = fault_server[1]
    flaky = await complete(client, item("flaky"), PLAN, SETTINGS)
    limited = await complete(client, item("limited"), PLAN, SETTINGS)
    assert (flaky.error, flaky.attempts, flaky.text) == (None, 2, "ok")
    assert (limited.error, limited.attempts) == (None, 3)
    assert server.hits == Counter({"flaky": 2, "limited": 3})
    assert flaky.headers == {"x-twice-strategy-applied": "none"}
    assert flaky.usage == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert flaky.twice is None
    # Every attempt carried the plan's headers and asked for the trace.
    sent = {"x-twice-trace": "1", "x-twice-strategy": "psr", "x-twice-rounds": "2"}
    assert server.headers == [sent] * 5


async def test_client_errors_are_not_retried_and_retries_are_bounded(
    client: AsyncOpenAI, fault_server: tuple[str, FaultServer]
) -> None:
    bad = await complete(client, item("bad"), PLAN, SETTINGS)
    down = await complete(client, item("down"), PLAN, SETTINGS)
    assert bad.attempts == 1
    assert bad.error is not None
    assert bad.error.startswith("HTTP 400")
    assert "scripted 400" in bad.error
    assert down.attempts == 3
    assert down.error is not None
    assert down.error.startswith("HTTP 500")
    assert fault_server[1].hits == Counter({"bad": 1, "down": 3})


async def test_connection_errors_are_retried() -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    async with AsyncOpenAI(base_url=closed, api_key="k", max_retries=0) as client:
        result = await complete(client, item("anything"), PLAN, SETTINGS)
    assert result.attempts == 3
    assert result.error is not None
    assert result.error.startswith("APIConnectionError")
