"""Appends one entry per psr request to a capped Redis stream that the round predictor retrains from.

The entry (format: `predictor.telemetry.entry_fields`) holds the request's features, the rounds granted and
used, the round of the first harmful verdict and the outcome; the request's text only when configured. A
Redis that is down or slow costs the entry, never the request: the failure is counted and logged once.
"""

from __future__ import annotations

import logging

from app.metrics import GatewayMetrics
from app.rounds import RoundsDecision, RoundsPolicy, plain_messages
from app.settings import TelemetrySettings
from app.store import RedisStore
from predictor.telemetry import entry_fields
from refiners.base import Run

log = logging.getLogger("twice.telemetry")

Outcome = str
"""answered, refused, error or cancelled."""


class Telemetry:
    def __init__(self, store: RedisStore, settings: TelemetrySettings, metrics: GatewayMetrics) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self.stream = store.key(settings.stream)
        self._warned = False

    async def record(self, run: Run, decision: RoundsDecision, outcome: Outcome) -> None:
        messages = None
        if self._settings.store_text:
            messages = plain_messages(run.messages)
        fields = entry_fields(
            features=RoundsPolicy.features_of(decision, run.messages),
            rounds_granted=run.rounds,
            rounds_used=run.rounds_used,
            first_harmful_round=run.first_harmful_round,
            rounds_source=decision.source,
            outcome=outcome,
            messages=messages,
        )
        try:
            await self._store.run(
                lambda client: client.xadd(
                    self.stream,
                    fields,  # type: ignore[arg-type]  # redis-py's stub types the mapping invariantly
                    maxlen=self._settings.max_entries,
                    approximate=True,
                )
            )
        except Exception as exc:  # a reply error too: telemetry never fails a request
            self._metrics.telemetry.labels(result="dropped").inc()
            if not self._warned:
                log.warning("telemetry entry dropped (%s); later drops are only counted", type(exc).__name__)
                self._warned = True
            return
        self._metrics.telemetry.labels(result="written").inc()
