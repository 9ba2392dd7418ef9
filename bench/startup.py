"""What the embedded backend's start-up probe adds to start-up, side by side in one run.

Starts `twice serve` on the embedded model with the probe on and off, alternately, `--repeats` times each, and
reports the median seconds from launch to the first 200 from /health, and the difference. Run it on a quiet
machine (the probe and the load each use the model's threads).

    .venv/bin/python bench/startup.py [--model qwen2.5-coder-1.5b-instruct] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def seconds_to_health(model: str, probe: bool, timeout_s: float = 600) -> float:
    port = free_port()
    env = {
        **os.environ,
        "TWICE_EMBEDDED__MODEL": model,
        "TWICE_EMBEDDED__STARTUP_PROBE": "true" if probe else "false",
        "TWICE_REDIS__ENABLED": "false",
        "TWICE_SERVER__LOG_LEVEL": "warning",
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while time.perf_counter() - started < timeout_s:
            if process.poll() is not None:
                raise RuntimeError(f"twice serve exited with {process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("twice serve did not answer /health in time")
    finally:
        process.terminate()
        process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for probe in (False, True):
            times[probe].append(seconds_to_health(args.model, probe))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"{args.model}: seconds from launch to /health, median of {args.repeats}")
    print(f"probe off {off:6.2f}   ({', '.join(f'{t:.2f}' for t in times[False])})")
    print(f"probe on  {on:6.2f}   ({', '.join(f'{t:.2f}' for t in times[True])})")
    print(f"the probe adds {on - off:.2f} s ({on / off:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
