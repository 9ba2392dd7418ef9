"""Opening a llama.cpp model the one way the gateway does, in-process and in the start-up probe.

The options are built once from the settings and passed whole to the probe's child process, so the model the
probe proves is loaded exactly as the gateway will load it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.settings import EmbeddedSettings
from refiners.backend import BackendUnavailable


def default_threads() -> int:
    """Half the cores. llama.cpp's threads spin at every layer barrier, so when they outnumber the cores
    left free (by the event loop, the HTTP server, other processes) decoding slows several-fold: measured
    here on 2 busy cores, 1 thread decoded 35 tokens/s and 2 threads 9."""
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass(frozen=True, slots=True)
class ModelOptions:
    path: Path
    n_ctx: int
    threads: int
    extra_buffer_types: bool

    @classmethod
    def from_settings(cls, settings: EmbeddedSettings) -> ModelOptions:
        """Options for the configured model; a catalogue model is verified, and assembled first when it
        ships in parts (seconds: call it off the event loop)."""
        model = settings.catalogue_model
        path = model.ensure(settings.model_cache_dir) if model is not None else settings.model_path
        assert path is not None  # catalogue_model is None only when model_path is set
        return cls(
            path=path,
            n_ctx=settings.n_ctx,
            threads=settings.n_threads or default_threads(),
            extra_buffer_types=settings.extra_buffer_types,
        )

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "path": str(self.path)})

    @classmethod
    def from_json(cls, text: str) -> ModelOptions:
        fields = json.loads(text)
        return cls(**{**fields, "path": Path(fields["path"])})


@contextmanager
def _model_params(**fields: object) -> Iterator[None]:
    """llama-cpp-python's `Llama` takes no argument for some of llama.cpp's model parameters
    (`use_extra_bufts` among them) and builds them from `llama_model_default_params()`: overlay the fields on
    that call for the duration of one load. Loads happen on one thread at a time (the backend's worker, or
    the probe's process)."""
    from llama_cpp import llama_cpp as lib

    original = lib.llama_model_default_params

    def overlaid() -> Any:
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    lib.llama_model_default_params = overlaid
    try:
        yield
    finally:
        lib.llama_model_default_params = original


def open_model(options: ModelOptions, *, verbose: bool = False) -> Any:
    """A `llama_cpp.Llama` over `options.path`; raises BackendUnavailable when it cannot be opened."""
    from llama_cpp import Llama

    if not options.path.is_file():
        raise BackendUnavailable(f"model file not found: {options.path}")
    with _model_params(use_extra_bufts=options.extra_buffer_types):
        llm = Llama(
            model_path=str(options.path),
            n_ctx=options.n_ctx,
            n_threads=options.threads,
            n_threads_batch=options.threads,
            n_batch=512,
            verbose=verbose,
        )
    if bool(llm.model_params.use_extra_bufts) != options.extra_buffer_types:
        llm.close()
        raise BackendUnavailable("llama.cpp did not take the extra_buffer_types setting")
    return llm


def system_info() -> str:
    """llama.cpp's build features as it reports them (`AVX2 = 1 | ... | AMX_INT8 = 1 | ...`)."""
    from llama_cpp import llama_cpp as lib

    info: bytes = lib.llama_print_system_info()
    return info.decode("utf-8", errors="replace").strip()
