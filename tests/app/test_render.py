"""The one renderer (app/render.py): fresh and replayed answers, JSON and SSE, and a stream that fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from app.cache import CachedAnswer, Replay
from app.errors import UpstreamTimeout
from app.protocol.chat import UsageInfo
from app.render import DONE, Ending, Envelope, render_json, render_stream
from refiners.base import Finished, GenerationEvent, TextPiece

ENVELOPE = Envelope("chatcmpl-test", 1_700_000_000, "tiny")
USAGE = UsageInfo(prompt_tokens=3, completion_tokens=2, total_tokens=5)


@dataclass
class Scripted:
    """A source that gives its events, then fails with `error` if one is set."""

    pieces: Sequence[GenerationEvent]
    error: Exception | None = None
    endings: list[tuple[str | None, int]] = field(default_factory=list)

    async def events(self) -> AsyncIterator[GenerationEvent]:
        for piece in self.pieces:
            yield piece
        if self.error is not None:
            raise self.error

    def ending(self, finished_reason: str | None, visible_tokens: int) -> Ending:
        self.endings.append((finished_reason, visible_tokens))
        return Ending(finished_reason or "stop", USAGE, {"request_id": ENVELOPE.request_id})


@dataclass
class Heard:
    first_texts: int = 0
    answers: list[tuple[str, Ending]] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)

    def first_text(self) -> None:
        self.first_texts += 1

    def answered(self, text: str, ending: Ending) -> None:
        self.answers.append((text, ending))

    async def close(self, outcome: str) -> None:
        self.outcomes.append(outcome)


def events_of(stream: AsyncIterator[bytes]) -> list[Any]:
    async def collect() -> list[bytes]:
        return [chunk async for chunk in stream]

    chunks = asyncio.run(collect())
    assert chunks[-1] == DONE
    body = b"".join(chunks[:-1])
    assert body.endswith(b"\n\n")
    return [orjson.loads(event.removeprefix(b"data: ")) for event in body.split(b"\n\n") if event]


def test_json_body_holds_the_joined_text_the_finish_reason_and_the_ending() -> None:
    source = Scripted([TextPiece("Hel"), TextPiece("lo"), Finished("length", 2)])
    heard = Heard()
    body = orjson.loads(asyncio.run(render_json(ENVELOPE, source, heard)))
    assert body["id"] == "chatcmpl-test"
    assert body["object"] == "chat.completion"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "length"}
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert body["twice"] == {"request_id": "chatcmpl-test"}
    assert source.endings == [("length", 2)]
    assert [text for text, _ in heard.answers] == ["Hello"]
    assert heard.first_texts == 0
    assert heard.outcomes == []  # a JSON answer's account is closed by its caller


def test_stream_is_role_content_final_usage_then_done() -> None:
    source = Scripted([TextPiece("Hel"), TextPiece(""), TextPiece("lo"), Finished("stop", 2)])
    heard = Heard()
    events = events_of(render_stream(ENVELOPE, source, heard, include_usage=True))
    assert [e["object"] for e in events] == ["chat.completion.chunk"] * 5
    assert all(
        (e["id"], e["created"], e["model"]) == ("chatcmpl-test", 1_700_000_000, "tiny") for e in events
    )
    role, hel, lo, final, usage = events
    # OpenAI writes a choice's logprobs and finish_reason as null, and leaves out what a chunk does not carry.
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert [hel["choices"][0]["delta"], lo["choices"][0]["delta"]] == [{"content": "Hel"}, {"content": "lo"}]
    assert not {"usage", "twice"} & (role.keys() | hel.keys())
    assert final["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert final["twice"] == {"request_id": "chatcmpl-test"}
    assert "usage" not in final
    assert usage["choices"] == []
    assert usage["usage"]["total_tokens"] == 5
    assert "twice" not in usage
    assert heard.first_texts == 1
    assert [text for text, _ in heard.answers] == ["Hello"]
    assert heard.outcomes == ["ok"]


def test_stream_leaves_out_usage_unless_asked() -> None:
    events = events_of(render_stream(ENVELOPE, Scripted([TextPiece("a")]), Heard(), include_usage=False))
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in e for e in events)


@pytest.mark.parametrize(
    ("error", "outcome", "error_type"),
    [
        (UpstreamTimeout("slow"), "backend_error", "timeout"),
        (RuntimeError("bug"), "server_error", "server_error"),
    ],
)
def test_a_stream_that_fails_after_it_started_ends_with_an_error_event(
    error: Exception, outcome: str, error_type: str
) -> None:
    heard = Heard()
    events = events_of(
        render_stream(ENVELOPE, Scripted([TextPiece("partial")], error), heard, include_usage=True)
    )
    assert events[1]["choices"][0]["delta"] == {"content": "partial"}
    assert events[-1]["error"]["type"] == error_type
    assert "bug" not in orjson.dumps(events[-1]).decode()  # no internals in the body
    assert heard.answers == []
    assert heard.outcomes == [outcome]


def test_a_stream_closed_early_is_cancelled() -> None:
    heard = Heard()

    async def first_then_close() -> None:
        stream = render_stream(
            ENVELOPE, Scripted([TextPiece("a"), TextPiece("b")]), heard, include_usage=False
        )
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(first_then_close())
    assert heard.outcomes == ["cancelled"]


def test_a_replay_renders_like_a_fresh_answer_with_its_cached_ending() -> None:
    text = "x" * 150
    usage = USAGE.model_dump(exclude_none=True)
    replay = Replay(CachedAnswer(text, "length", usage, "psr"), "chatcmpl-test", {"variant": "b"})
    events = events_of(render_stream(ENVELOPE, replay, Heard(), include_usage=True))
    contents = [e["choices"][0]["delta"].get("content") for e in events[1:-2]]
    assert contents == ["x" * 64, "x" * 64, "x" * 22]  # sliced as a stream delivers text
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["twice"] == {"request_id": "chatcmpl-test", "cache": "hit", "variant": "b"}
    assert events[-1]["usage"] == usage

    body = orjson.loads(asyncio.run(render_json(ENVELOPE, replay, Heard())))
    assert body["choices"][0]["message"]["content"] == text
    assert body["usage"] == usage


def test_a_replay_without_a_usable_usage_leaves_usage_out() -> None:
    for cached in (None, {"prompt_tokens": "many"}):
        replay = Replay(CachedAnswer("hi", "stop", cached, "none"), "chatcmpl-test", {})
        body = orjson.loads(asyncio.run(render_json(ENVELOPE, replay, Heard())))
        assert "usage" not in body
        events = events_of(render_stream(ENVELOPE, replay, Heard(), include_usage=True))
        assert all("usage" not in e for e in events)


def test_envelope_headers_name_the_request_and_the_strategies() -> None:
    assert ENVELOPE.headers("psr") == {
        "X-Twice-Request-Id": "chatcmpl-test",
        "X-Twice-Strategy-Applied": "psr",
    }
    first, second = Envelope.new("m"), Envelope.new("m")
    assert first.request_id.startswith("chatcmpl-")
    assert first.request_id != second.request_id
