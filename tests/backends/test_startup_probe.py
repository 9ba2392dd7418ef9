"""The embedded backend's start-up proof and the guard against llama.cpp's faulting extra buffer types.

The machine these tests run on may lack AMX, so the AMX fault itself cannot be caused here. The regression
guard is what avoids it: the model is loaded with llama.cpp's extra buffer types off, and the probe reads
llama.cpp's own load log to show that no extra buffer type (AMX, CPU_REPACK) was even considered. A native
crash is caused for real, with a null-pointer read in the probe's child (a `sitecustomize` that only the
probe's process runs), since the AMX fault cannot be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.backends.embedded import EmbeddedBackend
from app.backends.llama_model import ModelOptions, system_info
from app.backends.startup_probe import (
    DECODED_TOKENS,
    PROMPT_TOKENS,
    StartupProbeFailed,
    prove_generation,
)
from app.settings import EmbeddedSettings
from tests.conftest import EMBEDDED_MODEL
from tests.support.vllm_stub import free_port

pytestmark = pytest.mark.model

CRASH_IN_PROBE = """\
import ctypes, sys
if "app.backends.startup_probe" in sys.orig_argv:
    ctypes.string_at(0)  # a real segmentation fault, in the probe's process only
"""


def options(**settings: object) -> ModelOptions:
    return ModelOptions.from_settings(EmbeddedSettings.model_validate({"model": EMBEDDED_MODEL, **settings}))


@pytest.fixture
def crashing_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An environment in which the probe's child process dies of SIGSEGV before it answers."""
    (tmp_path / "sitecustomize.py").write_text(CRASH_IN_PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": os.environ["PYTHONPATH"]}


def test_probe_generates_with_no_extra_buffer_type_by_default() -> None:
    report = prove_generation(options(), timeout_s=120)
    assert report.prompt_tokens == PROMPT_TOKENS
    assert report.decoded_tokens == DECODED_TOKENS
    assert "CPU_Mapped" in report.buffer_types, report.buffer_types
    assert report.extra_buffer_types == (), f"llama.cpp considered {report.extra_buffer_types}"
    assert not any("AMX" in name for name in report.buffer_types), report.buffer_types
    assert "AVX" in report.system_info


def cpu_has_amx() -> bool:
    return "AMX_INT8 = 1" in system_info()


@pytest.mark.skipif(cpu_has_amx(), reason="on this CPU the extra buffer types fault (the test below)")
def test_probe_sees_extra_buffer_types_when_they_are_on() -> None:
    """The detector above can fail: with the setting on, llama.cpp offers its repacking buffer type."""
    report = prove_generation(options(extra_buffer_types=True), timeout_s=120)
    assert "CPU_REPACK" in report.extra_buffer_types


@pytest.mark.skipif(not cpu_has_amx(), reason="needs a CPU with AMX (and a llama.cpp built with it)")
def test_the_real_amx_fault_is_caught_by_the_probe_and_named() -> None:
    """Where llama.cpp was built with AMX, turning the extra buffer types back on is the crash of the bug
    report (a general protection fault in ggml_backend_amx_mul_mat at the first prefill): the probe's child
    dies of it, and start-up says what to change instead of serving."""
    with pytest.raises(StartupProbeFailed) as failed:
        prove_generation(options(extra_buffer_types=True), timeout_s=120)
    message = str(failed.value)
    assert "crashed in native code (SIGSEGV)" in message
    assert "AMX_INT8 = 1" in message
    assert "TWICE_EMBEDDED__EXTRA_BUFFER_TYPES=false" in message


async def test_the_serving_model_has_extra_buffer_types_off(embedded_backend: EmbeddedBackend) -> None:
    assert embedded_backend.extra_buffer_types is False


async def test_extra_buffer_types_reach_llama_cpp_when_on() -> None:
    backend = EmbeddedBackend(
        EmbeddedSettings(
            model=EMBEDDED_MODEL, extra_buffer_types=True, contexts=1, warmup=False, startup_probe=False
        )
    )
    await backend.start()
    try:
        assert backend.extra_buffer_types is True
    finally:
        await backend.close()


def test_native_crash_names_the_cause_and_the_settings(crashing_probe: dict[str, str]) -> None:
    with pytest.raises(StartupProbeFailed) as failed:
        prove_generation(options(), timeout_s=120)
    message = str(failed.value)
    assert "crashed in native code (SIGSEGV)" in message
    assert "GGML_NATIVE=OFF" in message
    assert "TWICE_EMBEDDED__STARTUP_PROBE=false" in message


def test_native_crash_with_extra_buffer_types_on_says_to_turn_them_off(
    crashing_probe: dict[str, str],
) -> None:
    with pytest.raises(StartupProbeFailed, match="TWICE_EMBEDDED__EXTRA_BUFFER_TYPES=false"):
        prove_generation(options(extra_buffer_types=True), timeout_s=120)


def test_a_model_llama_cpp_cannot_load_fails_the_probe(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(StartupProbeFailed, match=r"failed \(exit status 1: "):
        prove_generation(options(model_path=broken), timeout_s=120)


def test_a_probe_past_its_deadline_fails() -> None:
    with pytest.raises(StartupProbeFailed, match="TWICE_EMBEDDED__STARTUP_PROBE_TIMEOUT_S"):
        prove_generation(options(), timeout_s=0.05)


def test_serve_exits_with_the_message_instead_of_serving(crashing_probe: dict[str, str]) -> None:
    """`twice serve` stops at start-up, with the cause in its output, and never binds its port."""
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port())],
        env={**os.environ, **crashing_probe},
        capture_output=True,
        timeout=120,
        check=False,
    )
    output = (done.stdout + done.stderr).decode()
    assert done.returncode != 0
    assert "crashed in native code (SIGSEGV)" in output
    assert "Uvicorn running" not in output
