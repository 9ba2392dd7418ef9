"""A gateway process for reliability tests: `python -m app serve` with its output captured in a file.

Unlike tests/support/servers.py it keeps the process and its log at hand: fault tests grep the log (no
tracebacks, no secrets), shutdown tests signal the process, leak checks read /proc.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.vllm_stub import free_port

QUIET = {
    "TWICE_SERVER__LOG_LEVEL": "warning",
    "TWICE_PLAN__AUTO_EXPLORE_SHARE": "0",
    "TWICE_REDIS__ENABLED": "false",
    "TWICE_PLAYGROUND__ENABLED": "false",
}


@dataclass
class Gateway:
    base: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def vllm_env(upstream: str, **extra: str) -> dict[str, str]:
    """Settings for the vllm backend in front of a loopback upstream, with short timeouts."""
    return {
        "TWICE_BACKEND": "vllm",
        "TWICE_VLLM__UPSTREAM": upstream,
        "TWICE_VLLM__MODEL": "stub-model",
        "TWICE_VLLM__CONNECT_TIMEOUT_S": "1",
        "TWICE_VLLM__READ_TIMEOUT_S": "1",
        **extra,
    }


@contextmanager
def launched(env: dict[str, str], *args: str, ready_timeout: float = 90.0) -> Iterator[Gateway]:
    """Start `twice serve` and yield it once /health answers; terminate it (SIGTERM, then kill) after."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="twice-rel-") as folder:
        log_path = Path(folder) / "gateway.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--port", str(port), *args],
                env={**os.environ, **QUIET, **env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        gateway = Gateway(f"http://127.0.0.1:{port}", port, process, log_path)
        try:
            _wait_ready(gateway, ready_timeout)
            yield gateway
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_ready(gateway: Gateway, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"gateway exited with {gateway.process.returncode}:\n{gateway.log()}")
        try:
            if httpx.get(f"{gateway.base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway did not start in time:\n{gateway.log()}")
        time.sleep(0.1)
