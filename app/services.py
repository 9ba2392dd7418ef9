"""The typed container of everything a request needs, built once per app in its lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from app.auth import KeyRing
from app.backends import GatewayBackend
from app.experiments.results import Results
from app.experiments.store import ExperimentStore
from app.gate import Gate
from app.metrics import GatewayMetrics
from app.passthrough import ForwardingBackend
from app.plan import parse_plan
from app.plan_resolver import PlanResolver
from app.rounds import RoundsPolicy
from app.serving import ChatService
from app.settings import Settings
from app.store import RedisStore
from app.telemetry import Telemetry
from app.upstreams import UpstreamRouted
from refiners.config import RefinerConfig
from refiners.registry import build_strategies


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    backend: GatewayBackend
    metrics: GatewayMetrics
    keys: KeyRing
    """Who is calling: API keys and the admin key (app/auth.py)."""
    store: RedisStore
    """The Redis that replicas share (app/store.py); each part below degrades without it."""
    experiments: ExperimentStore
    """Experiment definitions, as this replica last saw them (app/experiments/store.py)."""
    results: Results
    """What each variant served and the feedback on it (app/experiments/results.py)."""
    gate: Gate
    """Around a chat request: rate limits, response cache, the answer kept (app/gate.py)."""
    chat: ChatService
    telemetry: Telemetry | None
    """The psr telemetry writer (app/telemetry.py), when telemetry and Redis are on."""

    async def start(self) -> None:
        if self.store.client is not None:
            await self.store.check()
        await self.experiments.start()
        if self.telemetry is not None:
            self.telemetry.start()

    async def close(self) -> None:
        if self.telemetry is not None:
            await self.telemetry.close()
        await self.experiments.close()
        await self.store.close()

    @classmethod
    def build(cls, settings: Settings, backend: GatewayBackend, registry: CollectorRegistry) -> Services:
        parse_plan({}, settings.plan)  # a bad default plan fails at start-up, not on the first request
        metrics = GatewayMetrics(registry)
        if isinstance(backend, UpstreamRouted):
            backend.observe_upstreams(metrics.upstreams)
        strategies = build_strategies(RefinerConfig(role_play=settings.role_play))
        forwarder = backend if isinstance(backend, ForwardingBackend) else None
        store = RedisStore(settings.redis, metrics)
        experiments = ExperimentStore(store, settings.experiments, settings.plan)
        results = Results(store, settings.experiments.attribution_ttl_s)
        gate = Gate(settings, metrics, store, results)
        telemetry = (
            Telemetry(store, settings.telemetry, metrics)
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
            plans=PlanResolver(settings, experiments),
            gate=gate,
            telemetry=telemetry,
        )
        return cls(
            settings=settings,
            backend=backend,
            metrics=metrics,
            keys=KeyRing(settings.auth),
            store=store,
            experiments=experiments,
            results=results,
            gate=gate,
            chat=chat,
            telemetry=telemetry,
        )
