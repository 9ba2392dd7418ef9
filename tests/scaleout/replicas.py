"""Several loopback vLLM stand-ins (tests/support/vllm_stub.py) that can be stopped and started again on the
same port, as a crashed and restarted replica would be, plus helpers to read what each one received."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
from aiohttp import web

from tests.support.vllm_stub import StubState, VllmStub, free_port

ROUTING_HEADER = "X-Twice-Routing-Key"


@dataclass
class Replica:
    port: int = field(default_factory=free_port)
    state: StubState = field(default_factory=StubState)
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Replica:
        """Serve on loopback in a thread of its own (as tests/support/vllm_stub.py `running_stub` does)."""
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(VllmStub(self.state).app, access_log=None)
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, daemon=True, name=f"replica-{self.port}")
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("the replica did not start")
        self._loop, self._runner = loop, runner
        return self

    def stop(self) -> None:
        """Go away as a replica shutting down does: stop accepting connections (new ones are refused), let
        the calls already inside finish, close the idle keep-alive connections, then stop."""
        if self._loop is None or self._runner is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._runner = self._thread = None
        # A connection accepted in the last moments before the loop stopped (the gateway health-checks every
        # 0.1 s) can be left as garbage whose socket was never closed. Collected later, its ResourceWarning
        # (an error under pytest's settings) failed whichever test ran then: 1 run in 20 of tests/scaleout.
        # Collect this replica's leftovers here, where they are made, with that warning ignored here only.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()

    @property
    def calls(self) -> int:
        return len(self.state.received)

    def routing_keys(self, header: str = ROUTING_HEADER) -> list[str]:
        """The routing key of every call received, in order (case-insensitive header lookup)."""
        lowered = header.lower()
        found: list[str] = []
        for headers in self.state.headers:
            found.extend(value for name, value in headers.items() if name.lower() == lowered)
        return found


@contextlib.contextmanager
def replicas(count: int, latency_s: float = 0.0) -> Iterator[list[Replica]]:
    started = [Replica(state=StubState(latency_s=latency_s)).start() for _ in range(count)]
    try:
        yield started
    finally:
        for replica in started:
            replica.stop()


def metric_values(base: str, name: str) -> dict[str, float]:
    """One metric's samples from the gateway's /metrics, keyed by their label text."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return {labels or "": float(value) for labels, value in pattern.findall(text)}
