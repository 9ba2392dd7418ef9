"""The typed container of everything a request needs, built once per app in its lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from app.backends import GatewayBackend
from app.gate import Gate
from app.metrics import GatewayMetrics
from app.passthrough import ForwardingBackend
from app.plan import parse_plan
from app.rounds import RoundsPolicy
from app.serving import ChatService
from app.settings import Settings
from app.telemetry import Telemetry
from app.upstreams import UpstreamRouted
from refiners.config import RefinerConfig
from refiners.registry import build_strategies


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    backend: GatewayBackend
    metrics: GatewayMetrics
    chat: ChatService
    gate: Gate
    """Redis-backed parts: API keys, rate limits, experiments, results, response cache (app/gate.py)."""
    telemetry: Telemetry | None
    """The psr telemetry writer (app/telemetry.py), when telemetry and Redis are on."""

    async def start(self) -> None:
        await self.gate.start()
        if self.telemetry is not None:
            self.telemetry.start()

    async def close(self) -> None:
        if self.telemetry is not None:
            await self.telemetry.close()
        await self.gate.close()

    @classmethod
    def build(cls, settings: Settings, backend: GatewayBackend, registry: CollectorRegistry) -> Services:
        parse_plan({}, settings.plan)  # a bad default plan fails at start-up, not on the first request
        metrics = GatewayMetrics(registry)
        if isinstance(backend, UpstreamRouted):
            backend.observe_upstreams(metrics.upstreams)
        strategies = build_strategies(RefinerConfig(role_play=settings.role_play))
        forwarder = backend if isinstance(backend, ForwardingBackend) else None
        gate = Gate(settings, metrics)
        telemetry = (
            Telemetry(gate.store, settings.telemetry, metrics)
            if settings.telemetry.enabled and settings.redis.enabled
            else None
        )
        chat = ChatService(
            backend,
            metrics,
            settings,
            strategies,
            RoundsPolicy.from_settings(settings.plan),  # a bad predictor artifact stops start-up
            forwarder,
            gate=gate,
            telemetry=telemetry,
        )
        return cls(
            settings=settings, backend=backend, metrics=metrics, chat=chat, gate=gate, telemetry=telemetry
        )
