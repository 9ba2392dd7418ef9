"""Appends one entry per psr request to a capped Redis stream that the round predictor retrains from.

The entry (format: `predictor.telemetry.entry_fields`) holds the request's features, the rounds granted and
used, the round of the first harmful verdict and the outcome; the request's text only when configured.

Telemetry is off the response path: a request puts its entry on a bounded queue and goes on; one background
writer sends the entries to Redis. A Redis that is down or slow costs entries, never requests: an entry that
finds the queue full, or that Redis does not take, is dropped and counted (`twice_telemetry_entries_total`,
`result="overflow"` or `"dropped"`), and logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
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

Entry = dict[str, str]

FLUSH_ON_CLOSE_S = 1.0
"""At shutdown, how long the writer may keep sending what is queued before the rest is dropped."""


class Telemetry:
    def __init__(self, store: RedisStore, settings: TelemetrySettings, metrics: GatewayMetrics) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self.stream = store.key(settings.stream)
        self._queue: asyncio.Queue[Entry] = asyncio.Queue(maxsize=settings.queue_size)
        self._writer: asyncio.Task[None] | None = None
        self._warned = False

    def start(self) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    async def close(self) -> None:
        """Sends what is queued for up to FLUSH_ON_CLOSE_S, then stops the writer; the rest is dropped."""
        if self._writer is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_ON_CLOSE_S):
                await self._queue.join()
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        self._writer = None
        while not self._queue.empty():
            self._queue.get_nowait()
            self._drop("dropped")

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def record(self, run: Run, decision: RoundsDecision, outcome: Outcome) -> None:
        """Queues the request's entry; never waits."""
        messages = plain_messages(run.messages) if self._settings.store_text else None
        entry = entry_fields(
            features=RoundsPolicy.features_of(decision, run.messages),
            rounds_granted=run.rounds,
            rounds_used=run.rounds_used,
            first_harmful_round=run.first_harmful_round,
            rounds_source=decision.source,
            outcome=outcome,
            messages=messages,
        )
        self.submit(entry)

    def submit(self, entry: Entry) -> None:
        """Queues one entry for the writer, or drops it (counted) when the queue is full."""
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self._drop("overflow")

    async def _write_forever(self) -> None:
        while True:
            entry = await self._queue.get()
            try:
                await self._write(entry)
            except asyncio.CancelledError:  # shut down while Redis held this entry
                self._drop("dropped")
                raise
            finally:
                self._queue.task_done()

    async def _write(self, entry: Entry) -> None:
        try:
            await self._store.run(
                lambda client: client.xadd(
                    self.stream,
                    entry,  # type: ignore[arg-type]  # redis-py's stub types the mapping invariantly
                    maxlen=self._settings.max_entries,
                    approximate=True,
                )
            )
        except Exception:  # a reply error too: telemetry never fails anything
            self._drop("dropped")
            return
        self._metrics.telemetry.labels(result="written").inc()

    def _drop(self, result: str) -> None:
        self._metrics.telemetry.labels(result=result).inc()
        if not self._warned:
            log.warning("telemetry entry %s (Redis slow, down or behind); later ones only counted", result)
            self._warned = True
