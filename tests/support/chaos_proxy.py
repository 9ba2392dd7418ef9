"""A loopback TCP proxy that misbehaves on request: a documented fake for a slow or flapping Redis.

A real Redis cannot be made slow or flaky on demand; this proxy sits between the gateway and a real Redis and,
by its current `mode`, passes bytes through, delays each chunk, trickles (one byte every 50 ms: each read
well within a socket timeout, the whole reply far beyond it), stalls (holds the bytes and answers nothing), or
drops (closes every connection at once, new ones included). The mode can change at any time; it applies to
the next chunk of every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from tests.support.loopback import free_port

Mode = Literal["pass", "delay", "trickle", "stall", "drop"]
TRICKLE_S = 0.05


class ChaosProxy:
    def __init__(self, upstream_port: int, delay_s: float = 1.0) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.mode: Mode = "pass"
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flowing: asyncio.Event | None = None
        """Set unless the mode is `stall`; only touched on the proxy's loop."""

    def set_mode(self, mode: Mode) -> None:
        """From any thread."""
        self.mode = mode
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._apply, mode)

    def _apply(self, mode: Mode) -> None:
        assert self._flowing is not None
        if mode == "stall":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == "drop":
            self._close_all()

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(65536):
                assert self._flowing is not None
                await self._flowing.wait()
                if self.mode == "delay":
                    await asyncio.sleep(self.delay_s)
                if self.mode == "drop":
                    break
                if self.mode == "trickle":
                    for index in range(len(chunk)):
                        writer.write(chunk[index : index + 1])
                        await writer.drain()
                        await asyncio.sleep(TRICKLE_S)
                    continue
                writer.write(chunk)
                await writer.drain()
        writer.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "drop":
            client_writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, upstream_writer}
        await asyncio.gather(
            self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer)
        )
        self._writers -= {client_writer, upstream_writer}

    def run(self, started: threading.Event, stop: threading.Event) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._flowing = asyncio.Event()
            self._apply(self.mode)
            server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            started.set()
            await asyncio.to_thread(stop.wait)
            server.close()
            self._close_all()

        asyncio.run(main())


@contextmanager
def running_chaos_proxy(upstream_port: int, delay_s: float = 1.0) -> Iterator[ChaosProxy]:
    proxy = ChaosProxy(upstream_port, delay_s)
    started, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=proxy.run, args=(started, stop), daemon=True)
    thread.start()
    assert started.wait(10), "the chaos proxy did not start"
    try:
        yield proxy
    finally:
        stop.set()
        thread.join(10)
