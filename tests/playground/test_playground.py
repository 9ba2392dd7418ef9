"""The playground page in a real headless chromium, against a real gateway on the embedded model.

The gateway runs with API keys on and a small context window (1,024 tokens): a psr verdict over a long prompt
then overflows it after the stream has started, which is how a real mid-stream error event is caused here.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, Request, sync_playwright

from app.main import create_app
from tests.conftest import SMALL_STRATEGIES
from tests.support.servers import running_gateway
from tests.support.vllm_stub import free_port

pytestmark = pytest.mark.model

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
API_KEY = "pg-test-key"
GATEWAY_ENV = {
    **SMALL_STRATEGIES,
    # Smaller still than the shared end-to-end settings, to keep this module near 90 s on 2 busy cores.
    "TWICE_SELF_QUESTION__QUESTIONS": "1",
    "TWICE_SELF_QUESTION__ANSWER_TOKENS": "16",
    "TWICE_ROLE_PLAY__ROLE_TOKENS": "16",
    "TWICE_EMBEDDED__N_CTX": "1024",
    "TWICE_AUTH__API_KEYS": API_KEY,
    # The page is compared plan by plan: each column gets exactly the rounds it names, not the predictor's.
    "TWICE_PLAN__CLIENT_MAY_LOWER_ROUNDS": "true",
}
SCREENSHOT_ENV = "TWICE_PLAYGROUND_SCREENSHOT"
"""Where the side-by-side test saves its screenshot; unset: a temporary folder, so tests never write into the
source tree (`make playground-screenshot` sets it to docs/img/playground.png)."""
RUN_TIMEOUT_MS = 120_000
# About 700 tokens: the generation prompt fits 1,024 tokens, the psr review prompt around it never does (its
# system prompt alone is 363 tokens on SmolLM2, its question 140); a short prompt's review fits with room.
LONG_PROMPT = "Please answer carefully and in detail. " * 100


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """`app` on uvicorn in a thread, without its lifespan."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    with running_gateway(env=GATEWAY_ENV) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, gateway_url: str) -> Iterator[Page]:
    context = browser.new_context(base_url=gateway_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    yield page
    context.close()
    # A script, style or fetch the Content-Security-Policy blocked would show up here.
    assert not [line for line in console if "Content Security Policy" in line], console


def columns(page: Page) -> list[dict[str, Any]]:
    """Each column's state and answer text, read in one round trip."""
    result: list[dict[str, Any]] = page.evaluate(
        """() => [...document.querySelectorAll('.column')].map((column) => ({
            state: column.dataset.state,
            answer: column.querySelector('.answer').textContent,
        }))"""
    )
    return result


def cost(page: Page, column: int, key: str) -> str:
    return page.locator(".column").nth(column).locator(f"dd[data-cost={key}]").inner_text()


def set_plan(page: Page, index: int, strategies: set[str], rounds: str) -> None:
    plan = page.locator(".plan").nth(index)
    for name in ("role_play", "self_question", "psr", "self_refine"):
        plan.locator(f"input[value={name}]").set_checked(name in strategies)
    if "psr" in strategies:
        plan.locator(".rounds input").fill(rounds)


def run_and_watch(page: Page) -> dict[int, set[int]]:
    """Click Run; until the run ends, the answer lengths each column showed while it was still streaming."""
    page.click("#run")
    seen: dict[int, set[int]] = {}
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
    while page.locator("body[data-running='1']").count() and time.monotonic() < deadline:
        for index, column in enumerate(columns(page)):
            if column["state"] == "streaming" and column["answer"]:
                seen.setdefault(index, set()).add(len(column["answer"]))
        page.wait_for_timeout(50)
    page.wait_for_selector("body[data-running='0']", state="attached", timeout=1000)
    return seen


def test_page_and_assets_are_served_under_a_strict_policy(gateway_url: str) -> None:
    page = httpx.get(f"{gateway_url}/playground")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self';" in policy
    assert "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script" in page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), "no inline script"
    assert " style=" not in page.text, "no inline style"
    for name, media_type in (("playground.js", "text/javascript"), ("playground.css", "text/css")):
        asset = httpx.get(f"{gateway_url}/playground/static/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(media_type)
    missing = httpx.get(f"{gateway_url}/playground/static/..%2Fsettings.py")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_three_plans_stream_side_by_side_with_trace_and_cost(page: Page, tmp_path: Path) -> None:
    requests: list[Request] = []

    def record(request: Request) -> None:  # playwright cannot wrap a builtin such as list.append
        requests.append(request)

    page.on("request", record)
    page.goto("/playground")
    page.fill("#api-key", API_KEY)
    page.fill("#max-tokens", "24")
    set_plan(page, 0, set(), "auto")
    set_plan(page, 1, {"psr"}, "2")
    page.click("#add-plan")
    set_plan(page, 2, {"self_question", "role_play"}, "auto")

    seen = run_and_watch(page)

    assert [column["state"] for column in columns(page)] == ["done", "done", "done"]
    assert set(seen) == {0, 1, 2}, f"a column showed no text before it finished: {seen}"
    assert all(column["answer"].strip() for column in columns(page))

    # What the page sent: the plan's headers, the key, trace and usage asked for.
    chats = [r for r in requests if r.url.endswith("/v1/chat/completions")]
    sent = {r.headers["x-twice-strategy"]: r for r in chats}
    assert set(sent) == {"none", "psr", "role_play,self_question"}
    assert sent["psr"].headers["x-twice-rounds"] == "2"
    assert "x-twice-rounds" not in sent["none"].headers
    for request in [*chats, *(r for r in requests if r.url.endswith("/v1/models"))]:
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
    for request in chats:
        assert request.headers["x-twice-trace"] == "1"
        body = json.loads(request.post_data or "{}")
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["max_tokens"] == 24
    assert page.evaluate("() => sessionStorage.getItem('twice.apiKey')") == API_KEY
    assert page.evaluate("() => localStorage.length") == 0

    # The psr column: a verdict badge with a numeric score after each checkpoint, and the rounds it used.
    badges = page.locator(".column").nth(1).locator(".answer .badge")
    assert 1 <= badges.count() <= 2
    for index in range(badges.count()):
        score = float(badges.nth(index).get_attribute("data-score") or "nan")
        assert 0.0 <= score <= 1.0
        assert re.fullmatch(r"[✓✗] \d\.\d\d", badges.nth(index).inner_text())
    assert page.locator(".column").nth(0).locator(".badge").count() == 0
    assert re.fullmatch(rf"{badges.count()} / 2 \(client\)", cost(page, 1, "rounds"))
    assert int(cost(page, 1, "backend_calls")) >= 2 * badges.count()
    assert cost(page, 0, "backend_calls") == "1"
    assert "undefined" not in cost(page, 0, "rounds")

    # The shapers' column: the generated role, the self-questions and their answers, before the answer.
    shaped = page.locator(".column").nth(2)
    steps = shaped.locator(".step").evaluate_all("(nodes) => nodes.map((node) => node.dataset.step)")
    # TWICE_SELF_QUESTION__QUESTIONS=1: one self-answer, unless the tiny model wrote no real question.
    assert steps in (["role", "questions", "answer"], ["role", "questions"])
    assert all(text.strip() for text in shaped.locator(".step p").all_inner_texts())
    assert int(cost(page, 2, "backend_calls")) == len(steps) + 1  # the shaping calls, then the answer
    assert int(cost(page, 2, "hidden_tokens")) > 0

    # The cost figures, from the final chunk, the usage chunk and the page's own clock.
    for column in (0, 1, 2):
        for key in ("hidden_tokens", "visible_tokens", "prompt_tokens", "backtracks"):
            assert cost(page, column, key).isdigit(), key
        assert 0 < int(cost(page, column, "visible_tokens")) <= 24
        for key in ("ttft_ms", "total_ms"):
            assert re.fullmatch(r"\d+ ms", cost(page, column, key)), key
        assert int(cost(page, column, "ttft_ms").split()[0]) <= int(cost(page, column, "total_ms").split()[0])

    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "playground.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


def test_backtracks_and_the_refusal_are_shown(browser: Browser) -> None:
    """With tau = 0 every verdict is harmful: the chunk is discarded twice, then psr refuses."""
    env = {**GATEWAY_ENV, "TWICE_PSR__THRESHOLD": "0", "TWICE_EMBEDDED__WARMUP": "false"}
    with running_gateway(env=env) as base:
        context = browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.goto("/playground")
            page.fill("#api-key", API_KEY)
            page.fill("#max-tokens", "16")
            set_plan(page, 0, {"psr"}, "4")
            set_plan(page, 1, set(), "auto")
            run_and_watch(page)

            refused = page.locator(".column").nth(0)
            assert refused.get_attribute("data-state") == "refused"
            assert "content_filter" in refused.locator(".refusal").inner_text()
            answer = refused.locator(".answer")
            assert answer.locator("del.discarded").count() == 2  # TWICE_PSR__MAX_HARMFUL_PER_CHECKPOINT
            assert all(text for text in answer.locator("del.discarded").all_inner_texts())
            assert answer.locator(".badge.harmful").count() == 2
            assert answer.locator(".refusal-text").inner_text().strip()
            assert cost(page, 0, "backtracks") == "2"
            assert int(cost(page, 0, "hidden_tokens")) > 0
            assert page.locator(".column").nth(1).get_attribute("data-state") == "done"
        finally:
            context.close()


def test_gateway_errors_are_shown(page: Page) -> None:
    page.goto("/playground")

    # A wrong key: the gateway's 401 stops the run before any column starts.
    page.fill("#api-key", "not-the-key")
    page.click("#run")
    page.wait_for_selector("#form-status.failed", timeout=10_000)
    assert "HTTP 401" in page.inner_text("#form-status")
    assert page.locator(".column").count() == 0

    # A bad rounds value (400 before the stream) beside a stream that fails after it started.
    page.fill("#api-key", API_KEY)
    page.fill("#prompt", LONG_PROMPT)
    page.fill("#max-tokens", "24")
    set_plan(page, 0, {"psr"}, "99")
    set_plan(page, 1, {"psr"}, "2")
    run_and_watch(page)

    bad_rounds, broken_stream = page.locator(".column").nth(0), page.locator(".column").nth(1)
    assert bad_rounds.get_attribute("data-state") == "error"
    assert bad_rounds.locator(".state").inner_text() == "HTTP 400"
    assert re.search(r"HTTP 400 \(.*param X-Twice-Rounds\): .+", bad_rounds.locator(".error").inner_text())
    assert broken_stream.get_attribute("data-state") == "error"
    message = broken_stream.locator(".error").inner_text()
    assert message.startswith("The stream failed after it started"), message
    assert "context" in message
    assert re.fullmatch(r"\d+ ms", cost(page, 1, "total_ms"))


def test_switched_off_it_is_not_found(browser: Browser, monkeypatch: pytest.MonkeyPatch) -> None:
    """The app built from `TWICE_PLAYGROUND__ENABLED=false` on real uvicorn; no lifespan, so no model."""
    monkeypatch.setenv("TWICE_PLAYGROUND__ENABLED", "false")
    with serving(create_app()) as base:
        context = browser.new_context()
        try:
            page = context.new_page()
            for path in ("/playground", "/playground/static/playground.js"):
                response = page.goto(base + path)
                assert response is not None
                assert response.status == 404
                assert response.json()["error"]["code"] == "not_found"
            assert httpx.get(f"{base}/health").status_code == 200
        finally:
            context.close()
