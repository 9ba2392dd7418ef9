"""Experiment definitions in Redis (app/experiments/store.py): create, read, replace, delete and their
versions; conflicts (exists, missing, changed meanwhile, full); the history; each replica's last-seen copy,
refreshed when the version moves; the seed file; and what happens while Redis is unavailable.

Redis on 127.0.0.1:6379 database 0, under a key prefix of each test's own (removed afterwards). A Redis that
is down from the start is port 1, which refuses connections at once on loopback; one that goes away and comes
back empty is a redis-server of the test's own (tests/experiments/support.py). The same flow through the
admin API and two gateways is in tests/experiments/test_experiments_e2e.py and test_redis_outage.py.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from app.errors import Conflict, InvalidRequest, NotFound, RedisUnavailable
from app.experiments.spec import MAX_EXPERIMENTS, ExperimentSpec
from app.experiments.store import HISTORY_KEPT, ExperimentStore
from app.metrics import GatewayMetrics
from app.settings import ExperimentSettings, PlanSettings, RedisSettings
from app.store import RedisStore
from tests.experiments.support import OwnRedis

DOWN = RedisSettings(url=SecretStr("redis://127.0.0.1:1/0"))


def spec(
    name: str = "exp", *weights: float, paused: bool = False, rounds: int | str = "auto"
) -> ExperimentSpec:
    """An experiment of variants `v0`, `v1`... (the first the control) with `weights` (one variant: 1)."""
    variants = [
        {"name": f"v{index}", "weight": weight, "strategies": "psr", "rounds": rounds}
        for index, weight in enumerate(weights or (1.0,))
    ]
    return ExperimentSpec.model_validate({"name": name, "variants": variants, "paused": paused})


class Stored:
    """An `ExperimentStore` (one replica) on the real Redis under a prefix of its own."""

    def __init__(
        self,
        prefix: str | None = None,
        *,
        redis_settings: RedisSettings | None = None,
        seed_file: Path | None = None,
        poll_interval_s: float = 1.0,
        plan: PlanSettings | None = None,
        port: int = 6379,
    ) -> None:
        """`redis_settings` replace the default ones (Redis on `port` under the prefix); `port` is also where
        the test looks inside."""
        self.prefix = prefix or f"twice-test-exp-{secrets.token_hex(4)}:"
        chosen = redis_settings or RedisSettings(
            url=SecretStr(f"redis://127.0.0.1:{port}/0"), key_prefix=self.prefix, max_backoff_s=0.2
        )
        self.store = RedisStore(chosen, _metrics())
        settings = ExperimentSettings(seed_file=seed_file, poll_interval_s=poll_interval_s)
        self.experiments = ExperimentStore(self.store, settings, plan or PlanSettings())
        self.redis = redis.Redis(port=port, decode_responses=True)

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(("exp", *parts))

    def state(self) -> str:
        return self.store.state

    def versions(self) -> dict[str, int]:
        """Each name's version as this replica last saw it."""
        return {experiment.name: experiment.version for experiment in self.experiments.all()}

    async def close(self) -> None:
        await self.experiments.close()
        keys = self.redis.keys(f"{self.prefix}*")
        if keys:
            self.redis.delete(*keys)
        self.redis.close()
        await self.store.close()


def _metrics() -> GatewayMetrics:
    return GatewayMetrics(CollectorRegistry())


@pytest.fixture
async def stored() -> AsyncIterator[Stored]:
    replica = Stored()
    yield replica
    await replica.close()


def write_seed_file(tmp_path: Path, *specs: ExperimentSpec) -> Path:
    path = tmp_path / "experiments.json"
    path.write_bytes(orjson.dumps([s.model_dump() for s in specs]))
    return path


# --- changes and their versions ----------------------------------------------------------------------------


async def test_a_created_experiment_is_in_redis_and_in_the_replicas_copy_at_version_1(stored: Stored) -> None:
    created = await stored.experiments.create(spec("exp", 3, 1))
    assert (created.name, created.version) == ("exp", 1)
    found = stored.experiments.get("exp")  # reloaded after the change, without waiting for a poll
    assert found is not None
    assert found.version == 1
    assert found.spec == spec("exp", 3, 1)
    assert await stored.experiments.read("exp") == created
    assert (
        ExperimentSpec.model_validate_json(stored.redis.hget(stored.key("defs"), "exp") or "") == created.spec
    )
    assert stored.redis.hget(stored.key("seq"), "exp") == "1"
    assert stored.redis.get(stored.key("version")) == "1"


async def test_creating_a_name_that_exists_is_a_conflict_and_changes_nothing(stored: Stored) -> None:
    await stored.experiments.create(spec("exp", 1))
    with pytest.raises(Conflict, match=r"'exp' exists already \(version 1\)") as refused:
        await stored.experiments.create(spec("exp", 1, 1))
    assert refused.value.status_code == 409
    assert refused.value.param == "name"
    assert (await stored.experiments.read("exp")).spec == spec("exp", 1)
    assert stored.redis.get(stored.key("version")) == "1"


async def test_a_replace_may_insist_on_the_version_it_read(stored: Stored) -> None:
    await stored.experiments.create(spec("exp", 1, 1))
    replaced = await stored.experiments.replace(spec("exp", 1, 0), expected=1)
    assert replaced.version == 2
    with pytest.raises(Conflict, match=r"changed meanwhile \(now version 2\)"):
        await stored.experiments.replace(spec("exp", 0, 1), expected=1)  # stale: it read version 1
    current = stored.experiments.get("exp")
    assert current is not None
    assert (current.version, current.spec) == (2, spec("exp", 1, 0))
    # Without an expected version the last writer wins.
    assert (await stored.experiments.replace(spec("exp", 0, 1))).version == 3


async def test_replacing_or_deleting_an_unknown_experiment_is_not_found(stored: Stored) -> None:
    with pytest.raises(NotFound, match="no experiment named 'ghost'") as missing:
        await stored.experiments.replace(spec("ghost"))
    assert missing.value.status_code == 404
    with pytest.raises(NotFound):
        await stored.experiments.delete("ghost")
    with pytest.raises(NotFound):
        await stored.experiments.read("ghost")
    with pytest.raises(NotFound):
        await stored.experiments.history("ghost")
    assert stored.redis.get(stored.key("version")) is None  # no change was made


async def test_a_deleted_name_recreated_counts_its_versions_on(stored: Stored) -> None:
    await stored.experiments.create(spec("exp"))
    assert await stored.experiments.delete("exp") == 2
    assert stored.experiments.get("exp") is None
    with pytest.raises(NotFound):
        await stored.experiments.read("exp")
    recreated = await stored.experiments.create(spec("exp", 2, 1))
    assert recreated.version == 3  # a client holding version 1 cannot mistake the new one for the old
    assert stored.versions() == {"exp": 3}


async def test_rounds_above_the_servers_maximum_are_refused_before_redis_is_written() -> None:
    replica = Stored(plan=PlanSettings(max_rounds=4))
    try:
        with pytest.raises(InvalidRequest, match="rounds"):
            await replica.experiments.create(spec("exp", rounds=5))
        await replica.experiments.create(spec("exp", rounds=4))
        with pytest.raises(InvalidRequest):
            await replica.experiments.replace(spec("exp", rounds=9))
        assert (await replica.experiments.read("exp")).version == 1
    finally:
        await replica.close()


async def test_there_are_at_most_max_experiments(stored: Stored) -> None:
    for index in range(MAX_EXPERIMENTS):
        await stored.experiments.create(spec(f"exp-{index}"))
    with pytest.raises(Conflict, match=f"There are {MAX_EXPERIMENTS} experiments already"):
        await stored.experiments.create(spec("one-more"))
    # A replace is not a new one, and a delete makes room.
    await stored.experiments.replace(spec("exp-0", 1, 1))
    await stored.experiments.delete("exp-1")
    await stored.experiments.create(spec("one-more"))
    assert len(stored.experiments.all()) == MAX_EXPERIMENTS


async def test_the_history_lists_every_change_newest_first_and_keeps_the_last_ones(stored: Stored) -> None:
    await stored.experiments.create(spec("exp", 1))
    await stored.experiments.replace(spec("exp", 1, 1))
    await stored.experiments.delete("exp")
    history = await stored.experiments.history("exp")  # the history outlives the definition
    assert [(entry["version"], entry["action"]) for entry in history] == [
        (3, "delete"),
        (2, "update"),
        (1, "create"),
    ]
    assert history[0]["spec"] is None
    assert ExperimentSpec.model_validate(history[1]["spec"]) == spec("exp", 1, 1)
    assert all(isinstance(entry["at"], float) for entry in history)

    await stored.experiments.create(spec("exp"))
    for _ in range(HISTORY_KEPT):
        await stored.experiments.replace(spec("exp"))
    versions = [entry["version"] for entry in await stored.experiments.history("exp")]
    last = 4 + HISTORY_KEPT
    assert versions == list(range(last, last - HISTORY_KEPT, -1))


# --- each replica's copy -----------------------------------------------------------------------------------


async def test_another_replicas_change_is_seen_once_the_version_is_polled(stored: Stored) -> None:
    other = Stored(stored.prefix)
    try:
        await other.experiments.create(spec("exp", 1, 1))
        assert stored.experiments.get("exp") is None  # not polled yet
        await stored.experiments.refresh()
        assert stored.versions() == {"exp": 1}
        await other.experiments.delete("exp")
        await stored.experiments.refresh()
        assert stored.versions() == {}
    finally:
        await other.close()


@pytest.mark.parametrize("seeded_by", ["the other replica", "this replica"])
async def test_an_emptied_redis_whose_version_comes_back_to_a_seen_value_is_reloaded(
    stored: Stored, seeded_by: str
) -> None:
    """Redis restarted without persistence counts versions from 1 again: a replica that compared the
    counter alone kept serving definitions that no longer exist."""
    other = Stored(stored.prefix)
    try:
        await stored.experiments.create(spec("gone"))
        await stored.experiments.refresh()
        assert stored.versions() == {"gone": 1}
        stored.redis.delete(*stored.redis.keys(f"{stored.prefix}*"))  # the restart: nothing kept
        if seeded_by == "the other replica":
            await other.experiments.refresh()
        await other.experiments.create(spec("new"))
        assert stored.redis.get(stored.key("version")) == "1"  # the value this replica saw
        await stored.experiments.refresh()
        assert stored.versions() == {"new": 1}
    finally:
        await other.close()


async def test_the_poller_started_with_the_store_picks_changes_up() -> None:
    polling = Stored(poll_interval_s=0.05)
    writer = Stored(polling.prefix)
    try:
        await polling.experiments.start()
        await writer.experiments.create(spec("exp"))
        for _ in range(100):
            if polling.experiments.get("exp") is not None:
                break
            await asyncio.sleep(0.02)
        assert polling.versions() == {"exp": 1}
    finally:
        await writer.close()
        await polling.close()


async def test_definitions_are_reloaded_only_when_the_version_moves_and_invalid_ones_are_skipped(
    stored: Stored, caplog: pytest.LogCaptureFixture
) -> None:
    await stored.experiments.create(spec("good"))
    await stored.experiments.refresh()  # the first refresh gives the data its epoch, and reloads
    # Written behind the store's back without bumping the version: the copy stays as it was.
    stored.redis.hset(stored.key("defs"), "broken", '{"name": "broken"}')
    stored.redis.hset(stored.key("defs"), "added", spec("added").model_dump_json())
    await stored.experiments.refresh()
    assert stored.versions() == {"good": 1}
    stored.redis.incr(stored.key("version"))
    with caplog.at_level(logging.ERROR, logger="twice.experiments"):
        await stored.experiments.refresh()
    assert stored.versions() == {"added": 0, "good": 1}  # `added` has no version of its own in exp:seq
    assert "experiment broken in redis is not valid; ignored" in caplog.text


async def test_reading_a_stored_definition_this_gateway_cannot_parse_is_a_conflict_naming_the_way_out(
    stored: Stored,
) -> None:
    """Another version of the gateway may have written it: the server's data, not the request, is at fault
    (it was a 400), and replacing or deleting it still works."""
    stored.redis.hset(stored.key("defs"), "newer", '{"name": "newer", "variants": [{"name": "a", "x": 1}]}')
    stored.redis.hset(stored.key("seq"), "newer", 1)
    with pytest.raises(Conflict, match=r"'newer' is not one this gateway can read .*replace it \(PUT\)"):
        await stored.experiments.read("newer")
    assert (await stored.experiments.replace(spec("newer"))).version == 2
    assert (await stored.experiments.read("newer")).spec == spec("newer")


# --- the seed file -----------------------------------------------------------------------------------------


async def test_the_seed_file_is_written_once_and_never_over_an_existing_definition(tmp_path: Path) -> None:
    seed_file = write_seed_file(tmp_path, spec("seeded", 1, 1), spec("mine"))
    first = Stored(seed_file=seed_file)
    try:
        assert first.versions() == {"mine": 0, "seeded": 0}  # known before Redis is asked
        await first.experiments.create(spec("mine", 5, 1))  # the operator got there first
        await first.experiments.start()
        assert first.versions() == {"mine": 1, "seeded": 1}
        assert first.experiments.get("mine") is not None
        assert (await first.experiments.read("mine")).spec == spec("mine", 5, 1)
        history = await first.experiments.history("seeded")
        assert [entry["action"] for entry in history] == ["seed"]
        # A second replica starting with the same file writes nothing.
        second = Stored(first.prefix, seed_file=seed_file)
        try:
            await second.experiments.start()
            assert second.versions() == {"mine": 1, "seeded": 1}
            assert first.redis.get(first.key("version")) == "2"
        finally:
            await second.close()
    finally:
        await first.close()


async def test_a_seed_file_with_rounds_above_the_maximum_stops_start_up(tmp_path: Path) -> None:
    seed_file = write_seed_file(tmp_path, spec("seeded", rounds=9))
    with pytest.raises(InvalidRequest, match="rounds"):
        ExperimentStore(
            RedisStore(RedisSettings(enabled=False), _metrics()),
            ExperimentSettings(seed_file=seed_file),
            PlanSettings(max_rounds=4),
        )


# --- without Redis -----------------------------------------------------------------------------------------


async def test_while_redis_is_down_the_seeds_serve_and_changes_and_reads_are_503(tmp_path: Path) -> None:
    down = Stored(redis_settings=DOWN, seed_file=write_seed_file(tmp_path, spec("seeded")))
    try:
        await down.experiments.start()  # does not fail: requests are served from the seeds
        assert down.versions() == {"seeded": 0}
        attempts: list[Any] = [
            down.experiments.create(spec("new")),
            down.experiments.replace(spec("seeded", 1, 1)),
            down.experiments.delete("seeded"),
            down.experiments.read("seeded"),
            down.experiments.history("seeded"),
        ]
        for attempt in attempts:
            with pytest.raises(RedisUnavailable) as unavailable:
                await attempt
            assert unavailable.value.status_code == 503
        assert down.versions() == {"seeded": 0}
    finally:
        await down.close()


async def test_with_redis_disabled_the_store_serves_its_seeds_and_polls_nothing(tmp_path: Path) -> None:
    disabled = Stored(
        redis_settings=RedisSettings(enabled=False), seed_file=write_seed_file(tmp_path, spec("seeded"))
    )
    try:
        tasks = len(asyncio.all_tasks())
        await disabled.experiments.start()
        assert len(asyncio.all_tasks()) == tasks  # no poller was started
        assert disabled.versions() == {"seeded": 0}
        with pytest.raises(RedisUnavailable):
            await disabled.experiments.create(spec("new"))
    finally:
        await disabled.close()


async def test_through_an_outage_the_last_definitions_serve_and_an_empty_redis_is_seeded_again(
    tmp_path: Path,
) -> None:
    """Redis goes away, then comes back empty (no persistence): the admin's change is lost, the replica keeps
    serving what it saw meanwhile and, once Redis answers, writes the seed file again and reloads."""
    server = OwnRedis(tmp_path)
    server.start()
    replica = Stored(port=server.port, seed_file=write_seed_file(tmp_path, spec("seeded")))
    try:
        await replica.experiments.start()
        await replica.experiments.create(spec("added"))
        assert replica.versions() == {"added": 1, "seeded": 1}

        server.stop()
        await replica.experiments.refresh_quietly()
        assert replica.state() == "degraded"
        assert replica.versions() == {"added": 1, "seeded": 1}

        server.start()
        for _ in range(100):
            if replica.state() == "ok":
                break
            await asyncio.sleep(0.05)
        await replica.experiments.refresh()
        assert replica.versions() == {"seeded": 1}
        assert replica.redis.hget(replica.key("seq"), "seeded") == "1"
        assert replica.redis.hget(replica.key("seq"), "added") is None
    finally:
        await replica.close()
        server.stop()
