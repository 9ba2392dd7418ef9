"""The processes a benchmark measures, each in its own process group, pinned to chosen CPUs: their CPU time
and resident memory read from /proc."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Server:
    name: str
    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time (user + system) this process and its descendants (uvicorn's workers) have used."""
        return sum(_own_cpu_seconds(pid) for pid in _with_descendants(self.pid))

    def rss_mb(self) -> float:
        """Resident memory of this process and its descendants, in MiB (VmRSS)."""
        return sum(_own_rss_kib(pid) for pid in _with_descendants(self.pid)) / 1024

    def processes(self) -> int:
        return len(_with_descendants(self.pid))


def _own_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # it exited, or this is not Linux
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces; it ends at the last ")"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _own_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


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


def pinned(command: list[str], cpus: Sequence[int] | None) -> list[str]:
    # taskset before exec, so every process uvicorn forks for its workers inherits the affinity.
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpu_list(cpus), *command]
    return command


_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def loopback_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without proxies (everything here talks to loopback), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARIABLES}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return {**env, **(extra or {})}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_healthy(
    url: str, process: subprocess.Popen[bytes], timeout_s: float, name: str, log: Path
) -> float:
    """Seconds until `url` answered 200."""
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            output = log.read_text(errors="replace")
            raise RuntimeError(f"the {name} exited with {process.returncode}:\n{output[-4000:]}")
        try:
            with _LOOPBACK.open(url, timeout=1) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.1)


@contextmanager
def running(
    name: str,
    command: list[str],
    *,
    url: str,
    health: str,
    cpus: Sequence[int] | None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120,
) -> Iterator[tuple[Server, float]]:
    """`command` in its own process group (stopped with it), once `url + health` answers 200; also yields
    the seconds it took to answer."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as folder:
        log = Path(folder) / "output.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                pinned(command, cpus),
                cwd=REPO_ROOT,
                env=loopback_env(env),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped with every process it started
            )
        try:
            startup_s = _wait_healthy(url + health, process, timeout_s, name, log)
            yield Server(name, url, process.pid), startup_s
        finally:
            _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group this module started, SIGKILL after 15 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def pin_self(cpus: Sequence[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, set(cpus))
