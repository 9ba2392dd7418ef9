"""Helpers of the experiments tests: a Redis database of their own, two gateways sharing it, polling."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import redis

from tests.support.polling import eventually
from tests.support.servers import running_gateway
from tests.support.vllm_stub import free_port

ADMIN_KEY = "admin-secret-test"
KEY_ALPHA = "sk-alpha-test"
KEY_BETA = "sk-beta-test"
API_KEYS = f"acme:{KEY_ALPHA},{KEY_BETA}"
MODEL = "stub-model"


def flushed(db: int, port: int = 6379) -> redis.Redis:
    """A client on `db` of the test Redis, emptied."""
    client = redis.Redis(port=port, db=db, decode_responses=True)
    client.flushdb()
    return client


def gateway_env(db: int, port: int = 6379, **extra: str) -> dict[str, str]:
    return {
        "TWICE_REDIS__URL": f"redis://127.0.0.1:{port}/{db}",
        "TWICE_AUTH__API_KEYS": API_KEYS,
        "TWICE_AUTH__ADMIN_KEY": ADMIN_KEY,
        "TWICE_PLAN__PREDICTOR": "false",
        **extra,
    }


@contextmanager
def two_gateways(stub_url: str, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Two `twice serve` processes on the vllm backend (the loopback stub), sharing one Redis."""
    with ExitStack() as stack:
        first = stack.enter_context(running_gateway("--backend", "vllm", "--upstream", stub_url, env=env))
        second = stack.enter_context(running_gateway("--backend", "vllm", "--upstream", stub_url, env=env))
        yield first, second


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(
    base: str,
    key: str = KEY_ALPHA,
    headers: dict[str, str] | None = None,
    content: str = "hello there",
    **fields: object,
) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}
    return httpx.post(
        f"{base}/v1/chat/completions", json=body, headers={**bearer(key), **(headers or {})}, timeout=30
    )


def admin(method: str, base: str, path: str, json: object = None) -> httpx.Response:
    return httpx.request(method, f"{base}/admin{path}", json=json, headers=bearer(ADMIN_KEY), timeout=10)


def metric_value(base: str, name: str, **labels: str) -> float:
    """The value of one sample on /metrics (0 when the series does not exist)."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] != name:
            continue
        found = set(series.partition("{")[2].rstrip("}").split(",")) if "{" in series else set()
        if wanted <= found:
            return float(value)
    return 0.0


class OwnRedis:
    """A redis-server of the test's own on a free loopback port, to stop and restart mid-test."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        assert server is not None, "redis-server is not installed"
        self.process = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ},
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        eventually(lambda: _pings(client), timeout=10)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
