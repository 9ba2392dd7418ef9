"""Backends the gateway can serve from. Each implements `refiners.backend.Backend` plus a lifecycle."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from app.settings import Settings
from refiners.backend import Backend


@runtime_checkable
class GatewayBackend(Backend, Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def check_ready(self) -> bool: ...

    async def list_models(self) -> list[str]: ...

    async def serves(self, model: str) -> bool:
        """Whether requests may name `model`."""
        ...


def build_backend(settings: Settings) -> GatewayBackend:
    """The configured backend, not yet started. llama_cpp is imported only when the embedded one starts."""
    if settings.backend == "vllm":
        from app.backends.vllm import VllmBackend

        return VllmBackend(settings.vllm)
    from app.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(settings.embedded)
