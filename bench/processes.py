"""The processes a benchmark measures: the vLLM stub and a `twice serve` gateway, pinned to chosen CPUs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import stop_process
from tests.support.vllm_stub import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKER_SETTLE_S = 3.0


@dataclass(frozen=True, slots=True)
class Server:
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time (user + system) this process and its descendants (uvicorn's workers) have used."""
        return sum(_own_cpu_seconds(pid) for pid in _with_descendants(self.pid))


def _own_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # it exited, or this is not Linux
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces; it ends at the last ")"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _with_descendants(pid: int) -> list[int]:
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = task.read_text().split()
        except OSError:
            continue
        for child in children:
            found += _with_descendants(int(child))
    return found


def cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def _pinned(command: list[str], cpus: Sequence[int] | None) -> list[str]:
    # taskset before exec, so every process uvicorn forks for its workers inherits the affinity.
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpu_list(cpus), *command]
    return command


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float, name: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(f"the {name} exited with {process.returncode}:\n{output}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback http only
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.1)


def _announced_port(process: subprocess.Popen[bytes]) -> int:
    assert process.stdout is not None
    seen: list[str] = []
    for raw in process.stdout:
        line = raw.decode(errors="replace").strip()
        if line.startswith("PORT "):
            return int(line.split()[1])
        seen.append(line)
    raise RuntimeError("the stub exited before it listened:\n" + "\n".join(seen))


@contextmanager
def running_stub(
    *, latency_s: float, token_delay_s: float = 0.0, cpus: Sequence[int] | None = None
) -> Iterator[Server]:
    """The vLLM stub in its own process, once it answers /health."""
    command = [sys.executable, "-m", "bench.stub_server", f"--latency-s={latency_s}"]
    command.append(f"--token-delay-s={token_delay_s}")
    if cpus:
        command.append(f"--cpus={cpu_list(cpus)}")
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{_announced_port(process)}"
        _wait_healthy(f"{base}/health", process, 30, "stub")
        yield Server(base, process.pid)
    finally:
        stop_process(process)


@contextmanager
def running_gateway(
    upstream: str, *, workers: int, cpus: Sequence[int] | None = None, timeout_s: float = 60
) -> Iterator[Server]:
    """`python -m app serve --backend vllm` in front of `upstream`, once it is ready."""
    port = free_port()
    command = [sys.executable, "-m", "app", "serve", "--backend", "vllm", "--upstream", upstream]
    command += ["--port", str(port), "--workers", str(workers)]
    env = {**os.environ, "TWICE_SERVER__LOG_LEVEL": "warning"}
    process = subprocess.Popen(
        _pinned(command, cpus), cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        # /ready, not /health: the gateway must have learnt the model id from the upstream.
        _wait_healthy(f"{base}/ready", process, timeout_s, "gateway")
        if workers > 1:
            # /ready came from the first worker up; the others accept only once their startup is done, and
            # connections opened before that would all stay with the first one.
            time.sleep(WORKER_SETTLE_S)
        yield Server(base, process.pid)
    finally:
        stop_process(process)


def pin_self(cpus: Sequence[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, set(cpus))
