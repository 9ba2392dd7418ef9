"""A request's account (app/account.py) and the pass-through's reading of relayed bytes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
from prometheus_client import CollectorRegistry

from app.account import Account, Answered
from app.metrics import GatewayMetrics
from app.passthrough import StreamReader, read_body
from app.protocol.chat import CompletionTokensDetails, UsageInfo
from app.render import Ending

USAGE = UsageInfo(
    prompt_tokens=7,
    completion_tokens=5,
    total_tokens=12,
    completion_tokens_details=CompletionTokensDetails(reasoning_tokens=2),
)


@dataclass
class Kept:
    calls: list[tuple[str, Answered]] = field(default_factory=list)

    async def __call__(self, request_id: str, answer: Answered, latency_s: float) -> None:
        assert latency_s >= 0
        self.calls.append((request_id, answer))


def sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def new_account(variant: str = "b", *, stream: bool = True) -> tuple[Account, GatewayMetrics, Kept]:
    metrics = GatewayMetrics(CollectorRegistry())
    account = Account(metrics)
    account.stream, account.variant, account.request_id = stream, variant, "chatcmpl-1"
    kept = Kept()
    account.keeper = kept
    return account, metrics, kept


def test_closing_counts_the_request_once_under_its_variant_and_keeps_the_answer() -> None:
    account, metrics, kept = new_account()
    account.first_text()
    account.first_text()  # only the first text is the first token
    account.answered("hello", Ending("stop", USAGE, {}))
    asyncio.run(account.close("ok"))
    asyncio.run(account.close("server_error"))  # closed already: nothing more is counted
    labels = {"outcome": "ok", "stream": "true", "variant": "b"}
    assert sample(metrics, "twice_requests_total", **labels) == 1
    assert sample(metrics, "twice_requests_total", outcome="server_error", stream="true", variant="b") == 0
    assert sample(metrics, "twice_request_duration_seconds_count", stream="true", variant="b") == 1
    assert sample(metrics, "twice_time_to_first_token_seconds_count", variant="b") == 1
    assert sample(metrics, "twice_tokens_total", kind="prompt") == 7
    assert sample(metrics, "twice_tokens_total", kind="reasoning") == 2
    assert kept.calls == [("chatcmpl-1", Answered("hello", "stop", USAGE))]


def test_a_failed_or_cancelled_request_keeps_nothing() -> None:
    for outcome in ("backend_error", "cancelled"):
        account, metrics, kept = new_account()
        account.answered("partial", Ending("stop", USAGE, {}))
        asyncio.run(account.close(outcome))
        assert sample(metrics, "twice_requests_total", outcome=outcome, stream="true", variant="b") == 1
        assert kept.calls == []


def test_a_cache_hit_spends_no_tokens_and_a_json_answer_has_no_first_token() -> None:
    account, metrics, kept = new_account(stream=False)
    account.cache_hit = True
    account.first_text()
    account.answered("cached", Ending("stop", USAGE, {"cache": "hit"}))
    asyncio.run(account.close("ok"))
    assert sample(metrics, "twice_tokens_total", kind="prompt") == 0
    assert sample(metrics, "twice_time_to_first_token_seconds_count", variant="b") == 0
    assert len(kept.calls) == 1  # the gate still records a hit for its experiment


def test_the_observer_counts_verdicts_under_the_requests_variant() -> None:
    account, metrics, _ = new_account("guarded")
    account.observer().verdict("harmful")
    assert sample(metrics, "twice_verdicts_total", result="harmful", variant="guarded") == 1


def test_a_relayed_json_body_is_read_once_for_the_account() -> None:
    choice = {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    body: dict[str, object] = {
        "choices": [choice],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": 1,
            "total_tokens": 4,
            "prompt_tokens_details": None,
        },
    }
    answer = read_body(orjson.dumps(body))
    assert (answer.text, answer.finish_reason, answer.tokens()) == ("hi", "stop", (3, 1))
    assert answer.plain
    assert answer.complete
    two = {**body, "choices": [choice, choice]}
    assert not read_body(orjson.dumps(two)).plain
    assert not read_body(b"not json").complete


def event(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chunk(content: str | None = None, finish: str | None = None, index: int = 0) -> bytes:
    delta = {} if content is None else {"content": content}
    return event({"choices": [{"index": index, "delta": delta, "finish_reason": finish}]})


USAGE_EVENT = event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
DONE = b"data: [DONE]\n\n"


def test_a_relayed_stream_read_event_by_event_gives_text_finish_and_usage() -> None:
    reader = StreamReader(every_event=True)
    reader.feed(chunk("Hel") + chunk("lo"))
    reader.feed(chunk(finish="length") + USAGE_EVENT)
    reader.feed(DONE)
    answer = reader.answer()
    assert (answer.text, answer.finish_reason, answer.tokens()) == ("Hello", "length", (3, 2))
    assert answer.complete


def test_a_relayed_stream_without_done_or_with_two_choices_is_not_complete() -> None:
    cut = StreamReader(every_event=True)
    cut.feed(chunk("a", "stop"))
    assert not cut.answer().complete
    two = StreamReader(every_event=True)
    two.feed(chunk("a") + chunk("b", index=1) + DONE)
    assert not two.answer().plain
    assert not two.answer().complete


def test_reading_only_usage_parses_no_text_and_keeps_nothing() -> None:
    reader = StreamReader(every_event=False)
    reader.feed(chunk("never read") + b'data: {"not json"\n\n')  # not parsed: it carries no usage
    reader.feed(USAGE_EVENT + DONE)
    answer = reader.answer()
    assert answer.text == ""
    assert answer.tokens() == (3, 2)
    assert answer.plain
    assert not answer.complete  # the text was not read: never cached
