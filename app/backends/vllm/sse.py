"""vLLM's server-sent events: byte chunks to whole events as they arrive, and whole events to their payloads.

The pass-through relays whole events unchanged (a failure can then still end its stream with a well-formed
error event) and reads payloads only where it needs them; the backend's own stream reads every payload.
"""

from __future__ import annotations

from collections.abc import Iterator

from refiners.backend import BackendError

__all__ = ["EventSplitter", "StreamCut", "event_data"]

_DONE_EVENTS = (b"data: [DONE]\n\n", b"data: [DONE]\r\n\r\n")


class StreamCut(BackendError):
    """The stream ended inside an event or before `data: [DONE]`. Its message may be shown to the client."""


class EventSplitter:
    """Byte chunks in, whole events out: `feed` each chunk as it arrives, `finish` when the chunks end."""

    __slots__ = ("_done", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        """The whole events not given yet, as one bytes: up to the last blank line received, the rest kept
        for the next chunk (b"" while no event is whole)."""
        pending = self._pending + chunk
        # An event ends at a blank line: b"\n\n", or b"\r\n\r\n" (found by its b"\n\r\n").
        lf = pending.rfind(b"\n\n")
        crlf = pending.rfind(b"\n\r\n")
        if lf < 0 and crlf < 0:
            self._pending = pending
            return b""
        end = max(lf + 2, crlf + 3)
        ready, self._pending = pending[:end], pending[end:]
        self._done = self._done or ready.endswith(_DONE_EVENTS)
        return ready

    def finish(self) -> None:
        """The chunks have ended: raises StreamCut unless they ended after a whole `data: [DONE]` event."""
        if self._pending.strip():
            raise StreamCut("The model backend ended the stream inside an event.")
        if not self._done:
            raise StreamCut("The model backend ended the stream before [DONE].")


def event_data(events: bytes) -> Iterator[bytes]:
    """The `data:` payload of each of `events` (whole events, as `EventSplitter.feed` gives them), a
    multi-line one joined with b"\\n". Comments, other fields and events without data give nothing."""
    data: list[bytes] = []
    for raw in events.split(b"\n"):
        line = raw.removesuffix(b"\r")
        if not line:
            if data:
                yield b"\n".join(data)
                data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
