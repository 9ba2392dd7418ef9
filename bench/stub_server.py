"""Serve the loopback vLLM stand-in (`tests/support/vllm_stub.py`) in a process of its own, for benchmarks.

`python -m bench.stub_server --latency-s 0.05` binds a free loopback port, prints `PORT <n>` on stdout once it
accepts connections, and serves until terminated. Request bodies are not kept (`keep_received=False`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence

from aiohttp import web

from tests.support.vllm_stub import StubState, VllmStub


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency off Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-s", type=float, default=0.0, help="Seconds before each answer.")
    parser.add_argument("--token-delay-s", type=float, default=0.0, help="Seconds between streamed tokens.")
    parser.add_argument("--cpus", default="", help="Comma-separated CPU ids to pin this process to.")
    parser.add_argument("--port", type=int, default=0, help="Loopback port (default: a free one).")
    args = parser.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in args.cpus.split(",")})

    stub = VllmStub(
        StubState(latency_s=args.latency_s, token_delay_s=args.token_delay_s, keep_received=False)
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", args.port))
    port = listener.getsockname()[1]

    async def announce(_: web.Application) -> None:
        print(f"PORT {port}", flush=True)

    stub.app.on_startup.append(announce)
    web.run_app(stub.app, sock=listener, access_log=None, print=None, loop=_new_loop(), backlog=1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
