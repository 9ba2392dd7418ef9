"""The typed container of everything a request needs, built once per app in its lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from app.backends import GatewayBackend
from app.metrics import GatewayMetrics
from app.passthrough import ForwardingBackend
from app.serving import ChatService
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    backend: GatewayBackend
    metrics: GatewayMetrics
    chat: ChatService

    @classmethod
    def build(cls, settings: Settings, backend: GatewayBackend, registry: CollectorRegistry) -> Services:
        metrics = GatewayMetrics(registry)
        forwarder = backend if isinstance(backend, ForwardingBackend) else None
        chat = ChatService(backend, metrics, settings, forwarder)
        return cls(settings=settings, backend=backend, metrics=metrics, chat=chat)
