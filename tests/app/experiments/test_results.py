"""Experiment outcomes and feedback (app/experiments/results.py) in the real Redis: counters, attribution,
feedback once per request and only by its caller, and the summary's arithmetic.

Redis on 127.0.0.1:6379 database 0, under a key prefix of each test's own (removed afterwards). The same flow
through gateways and the admin API is in tests/experiments/test_experiments_e2e.py.
"""

from __future__ import annotations

import math
import secrets
import statistics
from collections.abc import AsyncIterator

import pytest
import redis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from app.errors import Conflict, NotFound, RedisUnavailable
from app.experiments.results import Attribution, Outcome, Results
from app.experiments.spec import Experiment, ExperimentSpec
from app.experiments.welch import t_quantile
from app.metrics import GatewayMetrics
from app.settings import RedisSettings
from app.store import RedisStore

EXPERIMENT = Experiment(
    ExperimentSpec.model_validate(
        {"name": "exp", "variants": [{"name": "control", "weight": 1}, {"name": "treated", "weight": 1}]}
    ),
    version=3,
)
CONTROL = Attribution("exp", "control")
TREATED = Attribution("exp", "treated")


class Kept:
    def __init__(self, redis_settings: RedisSettings | None = None, ttl_s: int = 600) -> None:
        self.prefix = f"twice-test-results-{secrets.token_hex(4)}:"
        chosen = redis_settings or RedisSettings(key_prefix=self.prefix)
        self.store = RedisStore(chosen, GatewayMetrics(CollectorRegistry()))
        self.results = Results(self.store, ttl_s)
        self.redis = redis.Redis(decode_responses=True)

    def stats(self, variant: str) -> dict[str, str]:
        found = self.redis.hgetall(f"{self.prefix}exp:stats:exp:{variant}")
        return {str(field): str(value) for field, value in found.items()}

    async def served(self, request_id: str, attribution: Attribution, key: str | None = "key-1") -> None:
        await self.results.record(request_id, attribution, key, Outcome("stop", 10, 5, 0.5))

    async def close(self) -> None:
        keys = self.redis.keys(f"{self.prefix}*")
        if keys:
            self.redis.delete(*keys)
        self.redis.close()
        await self.store.close()


@pytest.fixture
async def kept() -> AsyncIterator[Kept]:
    results = Kept()
    yield results
    await results.close()


async def test_a_served_request_is_counted_for_its_variant_and_attributed_with_a_ttl(kept: Kept) -> None:
    await kept.results.record("r1", TREATED, "key-1", Outcome("content_filter", 10, 5, 0.25))
    await kept.results.record("r2", TREATED, None, Outcome("stop", None, None, 0.75))
    stats = kept.stats("treated")
    assert stats["requests"] == "2"
    assert stats["refusals"] == "1"  # content_filter is a refusal
    assert stats["usage_reported"] == "1"  # r2 had no usage
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == ("10", "5")
    assert float(stats["latency_sum"]) == pytest.approx(1.0)
    assert kept.stats("control") == {}
    request_key = f"{kept.prefix}exp:req:r1"
    assert kept.redis.hgetall(request_key) == {"e": "exp", "v": "treated", "k": "key-1"}
    assert 0 < kept.redis.ttl(request_key) <= 600
    assert kept.redis.hget(f"{kept.prefix}exp:req:r2", "k") == ""


async def test_feedback_goes_to_the_variant_that_served_the_request(kept: Kept) -> None:
    await kept.served("r1", TREATED)
    assert await kept.results.feedback("r1", 0.5, "key-1") == TREATED
    stats = kept.stats("treated")
    assert stats["feedback_count"] == "1"
    assert float(stats["feedback_sum"]) == 0.5
    assert float(stats["feedback_sumsq"]) == 0.25


async def test_feedback_is_given_once(kept: Kept) -> None:
    await kept.served("r1", CONTROL)
    await kept.results.feedback("r1", 1.0, "key-1")
    with pytest.raises(Conflict):
        await kept.results.feedback("r1", 0.0, "key-1")
    assert kept.stats("control")["feedback_count"] == "1"
    assert float(kept.stats("control")["feedback_sum"]) == 1.0


async def test_feedback_on_an_unknown_request_or_by_another_key_is_not_found(kept: Kept) -> None:
    with pytest.raises(NotFound):
        await kept.results.feedback("never-served", 1.0, "key-1")
    await kept.served("r1", CONTROL, key="key-1")
    with pytest.raises(NotFound):
        await kept.results.feedback("r1", 1.0, "key-2")
    with pytest.raises(NotFound):
        await kept.results.feedback("r1", 1.0, None)
    assert "feedback_count" not in kept.stats("control")
    await kept.served("anon", CONTROL, key=None)  # auth off: no key on either side
    assert await kept.results.feedback("anon", 1.0, None) == CONTROL


async def test_the_summary_computes_rates_means_and_welch_against_the_control(kept: Kept) -> None:
    control_scores = [0.1, 0.4, 0.35, 0.2]
    treated_scores = [0.7, 0.9, 0.6, 0.8, 1.0]
    for index, score in enumerate(control_scores):
        await kept.served(f"c{index}", CONTROL)
        await kept.results.feedback(f"c{index}", score, "key-1")
    for index, score in enumerate(treated_scores):
        await kept.results.record(
            f"t{index}", TREATED, "key-1", Outcome("content_filter" if index == 0 else "stop", 20, 10, 1.0)
        )
        await kept.results.feedback(f"t{index}", score, "key-1")
    summary = await kept.results.summary(EXPERIMENT)
    assert (summary["experiment"], summary["version"], summary["control"]) == ("exp", 3, "control")
    control, treated = summary["variants"]
    assert (control["control"], treated["control"]) == (True, False)
    assert "feedback_vs_control" not in control
    assert control["tokens"]["mean_total"] == 15
    assert control["latency_s"]["mean"] == pytest.approx(0.5)
    assert treated["refusal_rate"] == pytest.approx(1 / 5)
    assert treated["feedback"]["mean"] == pytest.approx(statistics.mean(treated_scores))
    assert treated["feedback"]["stddev"] == pytest.approx(statistics.stdev(treated_scores))
    v1 = statistics.variance(treated_scores) / len(treated_scores)
    v2 = statistics.variance(control_scores) / len(control_scores)
    df = (v1 + v2) ** 2 / (v1**2 / (len(treated_scores) - 1) + v2**2 / (len(control_scores) - 1))
    difference = statistics.mean(treated_scores) - statistics.mean(control_scores)
    half = t_quantile(0.975, df) * math.sqrt(v1 + v2)
    compared = treated["feedback_vs_control"]
    assert compared["difference"] == pytest.approx(difference)
    assert compared["ci95"] == pytest.approx([difference - half, difference + half])
    assert compared["df"] == pytest.approx(df)


async def test_a_variant_without_requests_or_feedback_has_no_means(kept: Kept) -> None:
    await kept.served("c0", CONTROL)
    summary = await kept.results.summary(EXPERIMENT)
    treated = summary["variants"][1]
    assert treated["requests"] == 0
    assert treated["refusal_rate"] is None
    assert treated["tokens"]["mean_total"] is None
    assert treated["latency_s"]["mean"] is None
    assert treated["feedback"] == {"count": 0, "mean": None, "stddev": None}
    assert treated["feedback_vs_control"] is None


async def test_forgetting_an_experiment_removes_its_counters_not_its_attributions(kept: Kept) -> None:
    await kept.served("r1", TREATED)
    await kept.served("o1", Attribution("exp.b", "treated"))  # another experiment, a name `exp` begins
    await kept.results.forget(EXPERIMENT.name)
    assert kept.stats("treated") == {}
    assert kept.redis.exists(f"{kept.prefix}exp:req:r1")
    assert kept.redis.hget(f"{kept.prefix}exp:stats:exp.b:treated", "requests") == "1"


async def test_while_redis_is_down_outcomes_are_skipped_and_feedback_and_results_are_503() -> None:
    # Port 1 refuses connections at once on loopback: a Redis that is down, without waiting on a timeout.
    down = Kept(RedisSettings(url=SecretStr("redis://127.0.0.1:1/0")))
    try:
        await down.served("r1", CONTROL)  # no error: serving goes on
        with pytest.raises(RedisUnavailable, match="not available"):
            await down.results.feedback("r1", 1.0, "key-1")
        with pytest.raises(RedisUnavailable):
            await down.results.summary(EXPERIMENT)
        await down.results.forget(EXPERIMENT.name)
    finally:
        await down.close()


async def test_with_redis_disabled_feedback_says_so() -> None:
    disabled = Kept(RedisSettings(enabled=False))
    try:
        with pytest.raises(RedisUnavailable, match="disabled"):
            await disabled.results.feedback("r1", 1.0, "key-1")
    finally:
        await disabled.close()
