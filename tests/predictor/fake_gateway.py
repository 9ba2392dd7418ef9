"""A FAKE twice gateway on loopback, for testing how `twice predictor label` reads psr traces.

It is a fake because the gateway does not implement psr yet. It answers `POST /v1/chat/completions` with
exactly the response contract of the strategies: an OpenAI chat.completion object plus a `twice` object
whose `trace` (present only with `X-Twice-Trace: 1`) lists generate and verdict steps. Its "psr" runs the
rounds budget from `X-Twice-Rounds`; a verdict turns harmful at the round named by a marker in the user
text (`FIRE@<round>`), or at round 1 when the text contains "bomb", and never otherwise. A harmful verdict
ends in a refusal (`finish_reason: "content_filter"`, `twice.refused: true`). `GRANT@<n>` makes it grant
fewer rounds than asked, and `FAIL500` answers with an error, for the fault paths; `FAILONCE` answers with
an error the first time a text is seen and normally after, and `SLEEP@<seconds>` answers late.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

_FIRE = re.compile(r"FIRE@(\d+)")
_GRANT = re.compile(r"GRANT@(\d+)")
_SLEEP = re.compile(r"SLEEP@(\d+)")


@dataclass
class FakeGatewayLog:
    headers: list[dict[str, str]] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    failed_once: set[str] = field(default_factory=set)


LOG_KEY = web.AppKey("log", FakeGatewayLog)


def _fire_round(text: str) -> int | None:
    marker = _FIRE.search(text)
    if marker:
        return int(marker.group(1))
    return 1 if "bomb" in text.lower() else None


def _trace(rounds: int, fire: int | None) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for round_number in range(1, rounds + 1):
        steps.append(
            {
                "strategy": "psr",
                "step": "generate",
                "round": 0,
                "checkpoint": round_number,
                "prompt": [],
                "output": "chunk",
                "elapsed_ms": 1.0,
            }
        )
        harmful = fire is not None and round_number >= fire
        steps.append(
            {
                "strategy": "psr",
                "step": "verdict",
                "round": round_number,
                "checkpoint": round_number,
                "prompt": [{"role": "system", "content": "..."}],
                "output": "Yes" if harmful else "No",
                "score": 0.9 if harmful else 0.1,
                "harmful": harmful,
                "off_format": False,
                "elapsed_ms": 1.0,
            }
        )
        if harmful:
            break
    return steps


async def _complete(request: web.Request) -> web.Response:
    log = request.app[LOG_KEY]
    body = await request.json()
    log.headers.append(dict(request.headers))
    log.bodies.append(body)
    text = " ".join(str(message.get("content", "")) for message in body["messages"])
    if "FAIL500" in text or ("FAILONCE" in text and text not in log.failed_once):
        log.failed_once.add(text)
        return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
    sleep = _SLEEP.search(text)
    if sleep:
        await asyncio.sleep(int(sleep.group(1)))
    asked = int(request.headers.get("X-Twice-Rounds", "0"))
    granted_marker = _GRANT.search(text)
    granted = int(granted_marker.group(1)) if granted_marker else asked
    fire = _fire_round(text)
    trace = _trace(granted, fire)
    refused = any(step.get("harmful") is True for step in trace)
    twice: dict[str, Any] = {
        "request_id": "chatcmpl-fake",
        "strategies": ["psr"],
        "rounds": {"granted": granted, "used": sum(step["step"] == "verdict" for step in trace)},
        "backend_calls": len(trace),
        "backtracks": 0,
        "refused": refused,
        "tokens": {"psr": {"prompt": 10, "completion": 1}},
    }
    if request.headers.get("X-Twice-Trace") == "1":
        twice["trace"] = trace
    return web.json_response(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "I can't help with that." if refused else "ok",
                    },
                    "finish_reason": "content_filter" if refused else "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
            "twice": twice,
        }
    )


@contextmanager
def running_fake_gateway() -> Iterator[tuple[str, FakeGatewayLog]]:
    """Serve the fake on a free loopback port in a background thread; yields its base URL and log."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = FakeGatewayLog()
    app = web.Application()
    app[LOG_KEY] = log
    app.router.add_post("/v1/chat/completions", _complete)
    runner = web.AppRunner(app)
    ready = threading.Event()
    stop: list[Any] = []

    def serve() -> None:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        stop.append(loop)
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop[0].call_soon_threadsafe(stop[0].stop)
        thread.join(10)


def label_command(base_url: str, out: Path, datasets: str, *extra: str, max_rounds: int = 6) -> list[str]:
    """`twice predictor label` against the fake gateway at `base_url`, as a subprocess argv."""
    return [
        sys.executable,
        "-m",
        "app",
        "predictor",
        "label",
        "--base-url",
        base_url,
        "--model",
        "m",
        "--max-rounds",
        str(max_rounds),
        "--out",
        str(out),
        "--datasets",
        datasets,
        "--no-progress",
        *extra,
    ]
