"""Experiment outcomes in Redis: what each variant served, and the feedback clients gave on it.

Keys (under the configured prefix):
    exp:stats:<experiment>:<variant>  hash of counters: requests, refusals, prompt_tokens,
                                      completion_tokens, usage_reported, latency_sum,
                                      feedback_count, feedback_sum, feedback_sumsq
    exp:req:<request id>              hash {e: experiment, v: variant, k: API key id, fb: score once
                                      given}, with a TTL (`attribution_ttl_s`)

Serving updates a variant's counters and writes the attribution in one MULTI; feedback checks and updates
in one Lua script, so concurrent replicas never lose an increment and a request is scored at most once.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from app.errors import Conflict, NotFound, RedisUnavailable
from app.experiments.spec import Experiment
from app.experiments.welch import Sample, welch_interval
from app.store import RedisStore, StoreUnavailable

log = logging.getLogger("twice.results")

_FEEDBACK = """
local found = redis.call('HMGET', KEYS[1], 'e', 'v', 'k', 'fb')
if not found[1] or found[3] ~= ARGV[2] then return {'missing'} end
if found[4] then return {'duplicate', found[1], found[2]} end
redis.call('HSET', KEYS[1], 'fb', ARGV[1])
local stats = ARGV[4] .. found[1] .. ':' .. found[2]
redis.call('HINCRBY', stats, 'feedback_count', 1)
redis.call('HINCRBYFLOAT', stats, 'feedback_sum', ARGV[1])
redis.call('HINCRBYFLOAT', stats, 'feedback_sumsq', ARGV[3])
return {'ok', found[1], found[2]}
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one served request cost and how it ended (usage only when the response reported it)."""

    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float

    @property
    def tokens(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


@dataclass(frozen=True, slots=True)
class Attribution:
    experiment: str
    variant: str


class Results:
    def __init__(self, store: RedisStore, attribution_ttl_s: int) -> None:
        self._store = store
        self._ttl = attribution_ttl_s
        self._feedback = store.client.register_script(_FEEDBACK) if store.client is not None else None

    def _stats_key(self, experiment: str, variant: str) -> str:
        return self._store.key("exp", "stats", experiment, variant)

    async def record(
        self, request_id: str, attribution: Attribution, key_id: str | None, outcome: Outcome
    ) -> None:
        """Count a served request for its variant; skipped (logged at debug) while Redis is down."""
        stats = self._stats_key(attribution.experiment, attribution.variant)
        request_key = self._store.key("exp", "req", request_id)
        refused = 1 if outcome.finish_reason == "content_filter" else 0

        async def write(r: Any) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hset(request_key, mapping={"e": attribution.experiment, "v": attribution.variant})
                pipe.hset(request_key, "k", key_id or "")
                pipe.expire(request_key, self._ttl)
                pipe.hincrby(stats, "requests", 1)
                pipe.hincrby(stats, "refusals", refused)
                pipe.hincrbyfloat(stats, "latency_sum", outcome.latency_s)
                if outcome.prompt_tokens is not None and outcome.completion_tokens is not None:
                    pipe.hincrby(stats, "usage_reported", 1)
                    pipe.hincrby(stats, "prompt_tokens", outcome.prompt_tokens)
                    pipe.hincrby(stats, "completion_tokens", outcome.completion_tokens)
                await pipe.execute()

        try:
            await self._store.run(write)
        except StoreUnavailable:
            log.debug("redis down: outcome of %s not recorded", request_id)

    async def feedback(self, request_id: str, score: float, key_id: str | None) -> Attribution:
        """Add `score` to the variant that served `request_id` (404 unknown or not yours, 409 twice)."""
        assert self._feedback is not None or self._store.client is None
        if self._feedback is None:
            raise RedisUnavailable("Redis is disabled; feedback cannot be recorded.")
        script = self._feedback
        keys = [self._store.key("exp", "req", request_id)]
        args = [repr(score), key_id or "", repr(score * score), self._store.key("exp", "stats", "")]
        try:
            found = await self._store.run(lambda _: script(keys=keys, args=args))
        except StoreUnavailable:
            raise RedisUnavailable("Redis is not available; feedback cannot be recorded now.") from None
        status = str(found[0])
        if status == "missing":
            raise NotFound(
                "No request with this id was served in an experiment (or its attribution expired).",
                param="request_id",
            )
        if status == "duplicate":
            raise Conflict("Feedback for this request was given already.", param="request_id")
        return Attribution(experiment=str(found[1]), variant=str(found[2]))

    async def forget(self, name: str) -> None:
        """Every variant's counters of experiment `name`, found by key pattern rather than from its
        definition, so that one this gateway cannot read is forgotten too (a name created again starts from
        nothing)."""
        pattern = _glob_literal(self._stats_key(name, "")) + "*"

        async def delete(r: Any) -> None:
            keys = [key async for key in r.scan_iter(match=pattern, count=1000)]
            if keys:
                await r.delete(*keys)

        with contextlib.suppress(StoreUnavailable):
            await self._store.run(delete)

    async def summary(self, experiment: Experiment) -> dict[str, Any]:
        """Per-variant counts and means, and each variant's feedback against the control (Welch, 95%)."""
        keys = [self._stats_key(experiment.name, v.name) for v in experiment.spec.variants]

        async def read(r: Any) -> list[dict[str, str]]:
            async with r.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                result: list[dict[str, str]] = await pipe.execute()
                return result

        try:
            rows = await self._store.run(read)
        except StoreUnavailable:
            raise RedisUnavailable("Redis is not available; results cannot be read now.") from None
        samples = [_feedback_sample(row) for row in rows]
        control = samples[0]
        variants = []
        for index, (variant, row, sample) in enumerate(
            zip(experiment.spec.variants, rows, samples, strict=True)
        ):
            entry = _variant_summary(row, sample)
            entry = {"name": variant.name, "weight": variant.weight, "control": index == 0, **entry}
            if index:
                interval = welch_interval(sample, control)
                entry["feedback_vs_control"] = (
                    None
                    if interval is None
                    else {
                        "difference": interval.difference,
                        "ci95": [interval.low, interval.high],
                        "df": interval.df,
                    }
                )
            variants.append(entry)
        return {
            "experiment": experiment.name,
            "version": experiment.version,
            "paused": experiment.spec.paused,
            "control": experiment.spec.control.name,
            "variants": variants,
        }


def _number(row: dict[str, str], field: str) -> float:
    return float(row.get(field) or 0)


def _feedback_sample(row: dict[str, str]) -> Sample:
    return Sample(
        count=int(_number(row, "feedback_count")),
        total=_number(row, "feedback_sum"),
        squares=_number(row, "feedback_sumsq"),
    )


def _variant_summary(row: dict[str, str], feedback: Sample) -> dict[str, Any]:
    requests = int(_number(row, "requests"))
    refusals = int(_number(row, "refusals"))
    reported = int(_number(row, "usage_reported"))
    prompt, completion = int(_number(row, "prompt_tokens")), int(_number(row, "completion_tokens"))
    variance = feedback.variance
    return {
        "requests": requests,
        "refusals": refusals,
        "refusal_rate": refusals / requests if requests else None,
        "tokens": {
            "prompt": prompt,
            "completion": completion,
            "usage_reported": reported,
            "mean_total": (prompt + completion) / reported if reported else None,
        },
        "latency_s": {"mean": _number(row, "latency_sum") / requests if requests else None},
        "feedback": {
            "count": feedback.count,
            "mean": feedback.mean,
            "stddev": variance**0.5 if variance is not None else None,
        },
    }


def _glob_literal(text: str) -> str:
    """`text` as a Redis glob that matches only itself."""
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)
