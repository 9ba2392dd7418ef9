"""Experiment definitions in Redis, shared by every replica, and each replica's last-seen copy of them.

Keys (under the configured prefix):
    exp:defs            hash  name → definition JSON (without its version)
    exp:seq             hash  name → latest version (kept after a delete, so a re-created name counts on)
    exp:history:<name>  hash  version → {"action", "at", "spec"} (the last HISTORY_KEPT versions)
    exp:version         counter bumped by every change; replicas poll it every `poll_interval_s`

Every change runs as one Lua script, so the definition, its version, its history and the global counter
move together, and an update can insist on the version it read (optimistic concurrency). While Redis is down
requests are served from the definitions last seen; the seed file is written again when Redis comes back
empty (a Redis without persistence loses admin changes on restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import TypeAdapter, ValidationError

from app.errors import Conflict, NotFound, RedisUnavailable
from app.experiments.spec import MAX_EXPERIMENTS, Experiment, ExperimentSpec
from app.settings import ExperimentSettings, PlanSettings
from app.store import RedisStore, StoreUnavailable

log = logging.getLogger("twice.experiments")

HISTORY_KEPT = 50
Action = Literal["create", "seed", "update", "delete"]

_WRITE = """
local name, action, spec, expected = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local exists = redis.call('HEXISTS', KEYS[1], name) == 1
local current = tonumber(redis.call('HGET', KEYS[2], name) or '0')
if (action == 'create' or action == 'seed') and exists then return {'exists', current} end
if (action == 'update' or action == 'delete') and not exists then return {'missing', current} end
if action == 'create' and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[6]) then return {'full', current} end
if expected ~= '' and tonumber(expected) ~= current then return {'conflict', current} end
local version = redis.call('HINCRBY', KEYS[2], name, 1)
if action == 'delete' then redis.call('HDEL', KEYS[1], name) else redis.call('HSET', KEYS[1], name, spec) end
redis.call('HSET', KEYS[3], version, ARGV[5])
redis.call('HDEL', KEYS[3], version - tonumber(ARGV[7]))
redis.call('INCR', KEYS[4])
return {'ok', version}
"""

_SEED_FILE = TypeAdapter(list[ExperimentSpec])


def load_seed_file(path: Path) -> list[ExperimentSpec]:
    """The experiments of a seed file; a file that does not parse stops start-up."""
    return _SEED_FILE.validate_json(path.read_bytes())


class UnreadableDefinition(Conflict):
    """A definition in Redis this gateway cannot parse: the server's data, not the request, is at fault, and
    replacing or deleting it is the way out."""


class ExperimentStore:
    _messages: ClassVar[dict[str, str]] = {
        "exists": "An experiment named {name!r} exists already (version {version}).",
        "missing": "There is no experiment named {name!r}.",
        "full": "There are {limit} experiments already; delete one first.",
        "conflict": "Experiment {name!r} changed meanwhile (now version {version}); read it and try again.",
        "unreadable": "The stored definition of {name!r} is not one this gateway can read ({problems} "
        "problems; written by another version?): replace it (PUT) or delete it.",
    }

    def __init__(self, store: RedisStore, settings: ExperimentSettings, plan: PlanSettings) -> None:
        self._store = store
        self._settings = settings
        self._plan = plan
        self._seeds = load_seed_file(settings.seed_file) if settings.seed_file else []
        for spec in self._seeds:
            spec.check_rounds(plan)
        self._experiments: dict[str, Experiment] = {s.name: Experiment(s, 0) for s in self._seeds}
        self._seen: tuple[str | None, str | None] = (None, None)
        """(version, epoch) of the definitions this replica holds (see `_state`)."""
        self._seeded = False
        self._poller: asyncio.Task[None] | None = None
        self._write = store.client.register_script(_WRITE) if store.client is not None else None

    def get(self, name: str) -> Experiment | None:
        return self._experiments.get(name)

    def all(self) -> list[Experiment]:
        return sorted(self._experiments.values(), key=lambda e: e.name)

    async def start(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.refresh()
        if self._store.client is not None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._settings.poll_interval_s)
            try:
                await self.refresh()
            except StoreUnavailable:
                continue
            except Exception:
                log.exception("reading experiments from redis failed")

    async def refresh(self) -> None:
        """Reload the definitions when their version or epoch moved; seed Redis when it has no epoch (never
        seeded, or emptied since)."""
        state = await self._state()
        if state[1] is None or not self._seeded:
            await self._seed()
            state = await self._state()
        if state != self._seen:
            await self._reload()

    async def _state(self) -> tuple[str | None, str | None]:
        """The definitions' version counter and the epoch of the Redis data holding them. A Redis emptied
        (restarted without persistence) counts versions from 1 again, so the counter alone could come back
        to a value this replica has seen with other definitions behind it; the epoch, a random token set
        once per emptied store, tells the two apart."""
        version, epoch = await self._store.run(lambda r: r.mget(self._key("version"), self._key("epoch")))
        return _text(version), _text(epoch)

    async def refresh_quietly(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.refresh()

    async def _seed(self) -> None:
        epoch = secrets.token_hex(8)
        await self._store.run(lambda r: r.set(self._key("epoch"), epoch, nx=True))
        for spec in self._seeds:
            status, _ = await self._run_write(spec.name, "seed", spec)
            if status == "ok":
                log.info("seeded experiment %s", spec.name)
        self._seeded = True

    async def _reload(self) -> None:
        async def read(r: Any) -> list[Any]:
            async with r.pipeline(transaction=True) as pipe:
                pipe.mget(self._key("version"), self._key("epoch"))
                pipe.hgetall(self._key("defs")).hgetall(self._key("seq"))
                result: list[Any] = await pipe.execute()
                return result

        (version, epoch), definitions, versions = await self._store.run(read)
        experiments: dict[str, Experiment] = {}
        for name, raw in definitions.items():
            try:
                spec = ExperimentSpec.model_validate_json(raw)
            except ValidationError:
                log.error("experiment %s in redis is not valid; ignored", name)
                continue
            experiments[name] = Experiment(spec, int(versions.get(name, 0)))
        self._experiments = experiments
        self._seen = (_text(version), _text(epoch))

    # --- admin changes -------------------------------------------------------------------------------

    async def create(self, spec: ExperimentSpec) -> Experiment:
        spec.check_rounds(self._plan)
        return await self._change(spec.name, "create", spec)

    async def replace(self, spec: ExperimentSpec, expected: int | None = None) -> Experiment:
        spec.check_rounds(self._plan)
        return await self._change(spec.name, "update", spec, expected)

    async def delete(self, name: str) -> int:
        _, version = await self._checked(name, "delete", None, None)
        await self._reload_quietly()
        return version

    async def read(self, name: str) -> Experiment:
        """The current definition from Redis (not the cached copy), for read-modify-write."""

        async def read(r: Any) -> list[Any]:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hget(self._key("defs"), name).hget(self._key("seq"), name)
                result: list[Any] = await pipe.execute()
                return result

        raw, version = await self._guarded(read)
        if raw is None:
            raise NotFound(self._messages["missing"].format(name=name), param="name")
        try:
            return Experiment(ExperimentSpec.model_validate_json(raw), int(version or 0))
        except ValidationError as exc:
            raise UnreadableDefinition(
                self._messages["unreadable"].format(name=name, problems=exc.error_count()), param="name"
            ) from None

    async def history(self, name: str) -> list[dict[str, Any]]:
        entries: dict[str, str] = await self._guarded(lambda r: r.hgetall(self._key("history", name)))
        if not entries:
            raise NotFound(self._messages["missing"].format(name=name), param="name")
        history = [{"version": int(v), **orjson.loads(raw)} for v, raw in entries.items()]
        return sorted(history, key=lambda entry: -int(entry["version"]))

    async def _change(
        self, name: str, action: Action, spec: ExperimentSpec, expected: int | None = None
    ) -> Experiment:
        _, version = await self._checked(name, action, spec, expected)
        await self._reload_quietly()
        return Experiment(spec, version)

    async def _checked(
        self, name: str, action: Action, spec: ExperimentSpec | None, expected: int | None
    ) -> tuple[str, int]:
        try:
            status, version = await self._run_write(name, action, spec, expected)
        except StoreUnavailable:
            raise RedisUnavailable("Redis is not available; experiments cannot change now.") from None
        if status == "ok":
            return status, version
        message = self._messages[status].format(name=name, version=version, limit=MAX_EXPERIMENTS)
        if status == "missing":
            raise NotFound(message, param="name")
        raise Conflict(message, param="name")

    async def _run_write(
        self, name: str, action: Action, spec: ExperimentSpec | None, expected: int | None = None
    ) -> tuple[str, int]:
        if self._write is None:
            raise StoreUnavailable("redis is disabled")
        spec_json = spec.model_dump_json() if spec is not None else ""
        entry = orjson.dumps(
            {"action": action, "at": round(time.time(), 3), "spec": spec.model_dump() if spec else None}
        )
        keys = [self._key("defs"), self._key("seq"), self._key("history", name), self._key("version")]
        args: list[str | int | bytes] = [
            name,
            action,
            spec_json,
            "" if expected is None else expected,
            entry,
            MAX_EXPERIMENTS,
            HISTORY_KEPT,
        ]
        write = self._write
        status, version = await self._store.run(lambda _: write(keys=keys, args=args))
        return str(status), int(version)

    async def _guarded(self, command: Any) -> Any:
        try:
            return await self._store.run(command)
        except StoreUnavailable:
            raise RedisUnavailable("Redis is not available; experiments cannot be read now.") from None

    async def _reload_quietly(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._reload()

    def _key(self, *parts: str) -> str:
        return self._store.key("exp", *parts)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
