"""The embedded backend's start-up proof, run in a short child process before the model is loaded in-process.

The child loads the model with the gateway's own options, prefills a multi-token prompt (the batched matrix
products a request's prompt takes) and decodes a few tokens (the one-row products of generation). A fault in
native code, such as llama.cpp's AMX kernels meeting a CPU or VM that does not let them run, then ends the
child and not the gateway, and start-up stops with a message naming the cause and the setting to change.

The child also reports the buffer types llama.cpp named while loading, read from its own log: the proof that
no extra buffer type (AMX, CPU_REPACK) is in use when the setting says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from app.backends.llama_model import ModelOptions, open_model, system_info
from refiners.backend import BackendUnavailable

PROMPT_TOKENS = 64
DECODED_TOKENS = 4
_PROMPT_TEXT = "A short paragraph about the history of bread, written for a school newsletter. "
# "load_tensors: CPU_Mapped model buffer size = ..." and "... cannot be used with preferred buffer type
# CPU_REPACK, using CPU instead": every buffer type llama.cpp considered for the weights.
_BUFFER_TYPE = re.compile(r"(\w+) model buffer size|buffer type (\w+)")
PLAIN_BUFFER_TYPES = frozenset({"CPU", "CPU_Mapped"})


class StartupProbeFailed(BackendUnavailable):
    """The embedded model could not prove at start-up that it generates on this machine."""


@dataclass(frozen=True, slots=True)
class ProbeReport:
    system_info: str
    buffer_types: tuple[str, ...]
    """Every buffer type llama.cpp named while loading the weights."""
    prompt_tokens: int
    decoded_tokens: int
    seconds: float = 0.0
    """Wall time of the whole child process, interpreter start included (filled in by the parent)."""

    @property
    def extra_buffer_types(self) -> tuple[str, ...]:
        return tuple(name for name in self.buffer_types if name not in PLAIN_BUFFER_TYPES)


def prove_generation(options: ModelOptions, timeout_s: float) -> ProbeReport:
    """Run the proof in a child process; raise StartupProbeFailed, with the cause, when it fails."""
    started = time.perf_counter()
    try:
        done = subprocess.run(  # noqa: S603 (our own interpreter and module; no shell)
            [sys.executable, "-m", __name__, options.to_json()],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StartupProbeFailed(
            f"the embedded model did not finish a {PROMPT_TOKENS}-token prefill and {DECODED_TOKENS} decoded "
            f"tokens in {timeout_s:g} s at start-up ({options.path.name}); raise "
            "TWICE_EMBEDDED__STARTUP_PROBE_TIMEOUT_S on a slow machine"
        ) from exc
    if done.returncode != 0:
        raise StartupProbeFailed(
            explain_failure(done.returncode, done.stderr.decode(errors="replace"), options)
        )
    fields = json.loads(done.stdout.decode().strip().splitlines()[-1])
    fields["buffer_types"] = tuple(fields["buffer_types"])
    fields["seconds"] = time.perf_counter() - started
    return ProbeReport(**fields)


def explain_failure(returncode: int, stderr: str, options: ModelOptions) -> str:
    """The start-up error: what ended the probe, what llama.cpp was built with, and what to change."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        cause = f"crashed in native code ({name})"
    else:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        cause = f"failed (exit status {returncode}: {last})"
    if options.extra_buffer_types:
        remedy = (
            "set TWICE_EMBEDDED__EXTRA_BUFFER_TYPES=false (llama.cpp's AMX and repacked-weight kernels "
            "fault on some CPUs)"
        )
    else:
        remedy = (
            'reinstall llama-cpp-python built for a generic CPU (CMAKE_ARGS="-DGGML_NATIVE=OFF" pip '
            "install --no-cache-dir --force-reinstall llama-cpp-python) or set TWICE_EMBEDDED__N_THREADS=1"
        )
    try:
        build = system_info()
    except ImportError:
        build = "llama_cpp does not import"
    return (
        f"the embedded model {cause} while proving at start-up that it can generate on this CPU "
        f"({options.path.name}, {options.threads} threads, extra buffer types "
        f"{'on' if options.extra_buffer_types else 'off'}; llama.cpp: {build}). To fix it, {remedy}. "
        "TWICE_EMBEDDED__STARTUP_PROBE=false skips this check."
    )


def _prove(options: ModelOptions) -> ProbeReport:
    log = io.StringIO()
    with contextlib.redirect_stderr(log):  # llama-cpp-python prints llama.cpp's log to sys.stderr
        llm = open_model(options, verbose=True)
        buffer_types = sorted(
            {a or b for a, b in _BUFFER_TYPE.findall(log.getvalue())}, key=lambda name: name.lower()
        )
        text = _PROMPT_TEXT
        while len(prompt := llm.tokenize(text.encode(), add_bos=False)) < PROMPT_TOKENS:
            text += _PROMPT_TEXT
        decoded = 0
        for _ in llm.generate(prompt[:PROMPT_TOKENS], temp=0.0):
            decoded += 1
            if decoded == DECODED_TOKENS:
                break
        llm.close()
    return ProbeReport(
        system_info=system_info(),
        buffer_types=tuple(buffer_types),
        prompt_tokens=PROMPT_TOKENS,
        decoded_tokens=decoded,
    )


def main(argv: list[str]) -> int:
    report = _prove(ModelOptions.from_json(argv[0]))
    print(json.dumps(asdict(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
