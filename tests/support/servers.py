"""Real gateway processes on loopback (`python -m app serve`), as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.support.vllm_stub import free_port


@contextmanager
def running_gateway(
    *args: str, env: dict[str, str] | None = None, ready_timeout: float = 60.0
) -> Iterator[str]:
    """Start `twice serve` with `args` and yield its base URL once /health answers."""
    port = free_port()
    # `auto` explores at random by default: pinned off so that tests see the predictor's choice.
    full_env = {
        **os.environ,
        "TWICE_SERVER__LOG_LEVEL": "warning",
        "TWICE_PLAN__AUTO_EXPLORE_SHARE": "0",
        **(env or {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port), *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout
    try:
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise RuntimeError(f"gateway exited with {process.returncode}:\n{output}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not start in time")
            time.sleep(0.1)
        yield base
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 15 s; close the captured output."""
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout:
        process.stdout.close()
