"""The typed container of everything a request needs, built once per app in its lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from app.backends import GatewayBackend
from app.gate import Gate
from app.metrics import GatewayMetrics
from app.passthrough import ForwardingBackend
from app.plan import parse_plan
from app.serving import ChatService, RoundsPolicy
from app.settings import PlanSettings, Settings
from app.upstreams import UpstreamRouted
from predictor import RoundPredictor
from refiners.base import Conversation
from refiners.config import RefinerConfig
from refiners.registry import build_strategies


def auto_rounds_policy(settings: PlanSettings) -> RoundsPolicy:
    """What `X-Twice-Rounds: auto` grants: the round predictor's choice within [auto_floor, max_rounds],
    or a fixed number when the predictor is off. An artifact that fails its card check stops start-up."""
    if not settings.predictor:
        rounds = min(settings.auto_rounds, settings.max_rounds)
        return lambda messages: rounds
    floor = min(settings.auto_floor, settings.max_rounds)
    if settings.predictor_path is None:
        predictor = RoundPredictor.default(floor=floor, ceiling=settings.max_rounds)
    else:
        predictor = RoundPredictor.load(settings.predictor_path, floor=floor, ceiling=settings.max_rounds)

    def policy(messages: Conversation) -> int:
        return predictor.predict_rounds([{"role": m.role, "content": m.content} for m in messages])

    return policy


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    backend: GatewayBackend
    metrics: GatewayMetrics
    chat: ChatService
    gate: Gate
    """Redis-backed parts: API keys, rate limits, experiments, results, response cache (app/gate.py)."""

    @classmethod
    def build(cls, settings: Settings, backend: GatewayBackend, registry: CollectorRegistry) -> Services:
        parse_plan({}, settings.plan)  # a bad default plan fails at start-up, not on the first request
        metrics = GatewayMetrics(registry)
        if isinstance(backend, UpstreamRouted):
            backend.observe_upstreams(metrics.upstreams)
        strategies = build_strategies(RefinerConfig(role_play=settings.role_play))
        forwarder = backend if isinstance(backend, ForwardingBackend) else None
        gate = Gate(settings, metrics)
        chat = ChatService(
            backend, metrics, settings, strategies, auto_rounds_policy(settings.plan), forwarder, gate=gate
        )
        return cls(settings=settings, backend=backend, metrics=metrics, chat=chat, gate=gate)
