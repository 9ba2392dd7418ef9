"""The SSE reader (app/backends/vllm/sse.py): whole events out of chunks cut anywhere, and their payloads."""

from __future__ import annotations

from itertools import pairwise

import pytest

from app.backends.vllm.sse import EventSplitter, StreamCut, event_data

LF_STREAM = (
    b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n'
    b": keep-alive comment\n\n"
    b'data: {"choices": [{"delta": {"content": "lo"}}]}\n\n'
    b'data: {"choices": [], "usage": {"prompt_tokens": 3}}\n\n'
    b"data: [DONE]\n\n"
)
CRLF_STREAM = LF_STREAM.replace(b"\n", b"\r\n")
PAYLOADS = [
    b'{"choices": [{"delta": {"content": "Hel"}}]}',
    b'{"choices": [{"delta": {"content": "lo"}}]}',
    b'{"choices": [], "usage": {"prompt_tokens": 3}}',
    b"[DONE]",
]


def event_ends(stream: bytes, blank_line: bytes) -> list[int]:
    """The offsets just past each event of `stream` (`blank_line` closes an event)."""
    ends, start = [], 0
    while (found := stream.find(blank_line, start)) >= 0:
        start = found + len(blank_line)
        ends.append(start)
    return ends


def fed(splitter: EventSplitter, chunks: list[bytes]) -> list[bytes]:
    return [ready for chunk in chunks if (ready := splitter.feed(chunk))]


@pytest.mark.parametrize(("stream", "blank_line"), [(LF_STREAM, b"\n\n"), (CRLF_STREAM, b"\r\n\r\n")])
def test_every_cut_gives_exactly_the_events_completed_so_far(stream: bytes, blank_line: bytes) -> None:
    ends = event_ends(stream, blank_line)
    assert len(ends) == 5
    for cut in range(len(stream) + 1):
        splitter = EventSplitter()
        first = splitter.feed(stream[:cut])
        whole_before_cut = max((end for end in ends if end <= cut), default=0)
        assert first == stream[:whole_before_cut], cut
        assert first + splitter.feed(stream[cut:]) == stream, cut
        splitter.finish()


def test_two_cuts_at_every_pair_of_offsets_lose_and_reorder_nothing() -> None:
    for first_cut in range(len(LF_STREAM) + 1):
        for second_cut in range(first_cut, len(LF_STREAM) + 1):
            splitter = EventSplitter()
            chunks = [LF_STREAM[:first_cut], LF_STREAM[first_cut:second_cut], LF_STREAM[second_cut:]]
            given = fed(splitter, chunks)
            assert b"".join(given) == LF_STREAM
            assert all(ready.endswith(b"\n\n") for ready in given)
            splitter.finish()


def test_one_byte_at_a_time_gives_each_event_when_its_blank_line_arrives() -> None:
    splitter = EventSplitter()
    given = fed(splitter, [LF_STREAM[i : i + 1] for i in range(len(LF_STREAM))])
    ends = event_ends(LF_STREAM, b"\n\n")
    assert given == [LF_STREAM[start:end] for start, end in pairwise([0, *ends])]


def test_payloads_of_lf_and_crlf_events_are_the_same() -> None:
    assert list(event_data(LF_STREAM)) == PAYLOADS
    assert list(event_data(CRLF_STREAM)) == PAYLOADS


def test_multi_line_data_is_joined_with_newlines() -> None:
    events = b"data: first\ndata: second\r\ndata:third\n\ndata: alone\n\n"
    assert list(event_data(events)) == [b"first\nsecond\nthird", b"alone"]


def test_comments_other_fields_and_dataless_events_give_nothing() -> None:
    events = b": comment\n\nevent: ping\nid: 7\nretry: 100\n\nevent: message\ndata: kept\n: aside\n\n"
    assert list(event_data(events)) == [b"kept"]


def test_only_one_space_after_the_colon_is_dropped() -> None:
    assert list(event_data(b"data:  two spaces\n\ndata:none\n\n")) == [b" two spaces", b"none"]


def test_a_chunk_without_a_whole_event_gives_nothing_and_keeps_its_bytes() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b"data: [DO") == b""
    assert splitter.feed(b"NE]\n") == b""
    assert splitter.feed(b"\n") == b"data: [DONE]\n\n"
    splitter.finish()


def test_a_trailing_partial_event_waits_and_a_stream_ending_inside_it_is_cut() -> None:
    splitter = EventSplitter()
    assert splitter.feed(b'data: [DONE]\n\ndata: {"late') == b"data: [DONE]\n\n"
    with pytest.raises(StreamCut, match="inside an event"):
        splitter.finish()


def test_a_stream_ending_without_done_is_cut() -> None:
    splitter = EventSplitter()
    assert splitter.feed(LF_STREAM.removesuffix(b"data: [DONE]\n\n"))
    with pytest.raises(StreamCut, match=r"before \[DONE\]"):
        splitter.finish()


@pytest.mark.parametrize("chunks", [[], [b""], [b"\n\n"], [b"data: [DONE]\n"]])
def test_nothing_or_an_unfinished_done_is_cut(chunks: list[bytes]) -> None:
    splitter = EventSplitter()
    fed(splitter, chunks)
    with pytest.raises(StreamCut):
        splitter.finish()


@pytest.mark.parametrize("done", [b"data: [DONE]\n\n", b"data: [DONE]\r\n\r\n"])
def test_done_ends_a_stream_in_either_line_ending(done: bytes) -> None:
    splitter = EventSplitter()
    fed(splitter, [b"data: {}\n\n", done])
    splitter.finish()
