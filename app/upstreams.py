"""The pool of vLLM upstreams the gateway spreads requests over, keeping the calls of one request together.

vLLM's prefix cache lives in each replica: psr, self_refine and self_question pay a long prompt's prefill once
only when every call of a request reaches the same replica. The pool picks the upstream by rendezvous
(highest-random-weight) hashing of the request's routing key: every call with the same key lands on the same
healthy upstream, different keys spread evenly, and when an upstream leaves only its own keys move, each to
its next-ranked upstream (the equivalent of the next node on a hash ring, without virtual nodes to tune).

Membership: a fixed list (`vllm.upstreams`) or every address a DNS name resolves to (`vllm.upstreams_dns`, as
a headless Service gives), resolved again every `dns_refresh_s`. Health: `GET /health` every
`health_interval_s`; an upstream leaves after `unhealthy_after` consecutive failures, or at once when a real
call cannot connect to it, and rejoins after `healthy_after` consecutive successes. While no upstream is
healthy, calls still go to the first-ranked one: failing fast there beats refusing without asking.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from app.settings import VllmSettings, parse_dns_target

log = logging.getLogger("twice.upstreams")

__all__ = [
    "AffinityTracker",
    "HealthCheck",
    "Resolver",
    "Upstream",
    "UpstreamObserver",
    "UpstreamPool",
    "UpstreamRouted",
    "rank",
    "resolve_host",
]

AFFINITY_KEYS = 16_384
"""Routing keys remembered for affinity accounting. A request's calls come seconds apart, so the most recent
keys are the ones that matter; older ones fall out instead of growing without bound."""

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Host and port to the IP addresses serving it (an injectable seam, so tests need no DNS server)."""

HealthCheck = Callable[[str], Awaitable[bool]]
"""An upstream's URL to whether it answers `GET /health` now (the vLLM client's `Transport.healthy`)."""


class UpstreamObserver(Protocol):
    """What the pool reports (app/metrics.py `UpstreamMetrics` counts it)."""

    def call(self, upstream: str) -> None: ...

    def affinity_break(self) -> None: ...

    def health(self, upstream: str, healthy: bool, changed: bool) -> None: ...

    def forget(self, upstream: str) -> None: ...


@runtime_checkable
class UpstreamRouted(Protocol):
    """A backend that spreads calls over an upstream pool (the vllm backend)."""

    def observe_upstreams(self, observer: UpstreamObserver) -> None: ...

    def upstreams_report(self) -> dict[str, Any]: ...


class _NullObserver:
    def call(self, upstream: str) -> None:
        return

    def affinity_break(self) -> None:
        return

    def health(self, upstream: str, healthy: bool, changed: bool) -> None:
        return

    def forget(self, upstream: str) -> None:
        return


def _weight(key: str, url: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{url}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(key: str, urls: Iterable[str]) -> list[str]:
    """`urls` in the order `key` prefers them (rendezvous hashing): stable while the set is, and removing one
    URL leaves the order of the others unchanged."""
    return sorted(urls, key=lambda url: _weight(key, url), reverse=True)


async def resolve_host(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def _url(address: str, port: int) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


@dataclass
class Upstream:
    url: str
    healthy: bool = True
    failures: int = 0
    successes: int = 0


class AffinityTracker:
    """Which upstream each recent routing key's calls went to; a key seen on a second upstream is one
    affinity break, counted once."""

    def __init__(self, capacity: int = AFFINITY_KEYS) -> None:
        self._first: OrderedDict[str, str | None] = OrderedDict()
        self._capacity = capacity

    def record(self, key: str, url: str) -> bool:
        """Whether this call broke the key's affinity (the first time only)."""
        if key not in self._first:
            self._first[key] = url
            if len(self._first) > self._capacity:
                self._first.popitem(last=False)
            return False
        self._first.move_to_end(key)
        first = self._first[key]
        if first is None or first == url:
            return False
        self._first[key] = None  # broken already: do not count this request again
        return True


class UpstreamPool:
    """The upstreams, their health, and the choice of one per call. All state lives on one event loop."""

    def __init__(
        self,
        settings: VllmSettings,
        *,
        resolver: Resolver = resolve_host,
        observer: UpstreamObserver | None = None,
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self._observer: UpstreamObserver = observer or _NullObserver()
        self._dns = parse_dns_target(settings.upstreams_dns) if settings.upstreams_dns else None
        configured = settings.upstreams or ([] if self._dns else [settings.upstream])
        self._members: dict[str, Upstream] = {
            url.rstrip("/"): Upstream(url.rstrip("/")) for url in configured
        }
        self.checking = bool(settings.upstreams or settings.upstreams_dns)
        """Health-checked pool mode; a single `upstream` is used as it is (a Service or a router)."""
        self._affinity = AffinityTracker()
        self._round_robin = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._resolved_at = -float("inf")

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, check: HealthCheck) -> None:
        """Resolve, probe every upstream once with `check` (so a dead one takes no traffic from the start),
        then keep checking in the background."""
        if not self.checking:
            return
        await self._refresh_dns()
        await asyncio.gather(*(self._probe_initial(check, member) for member in list(self._members.values())))
        self._task = asyncio.create_task(self._watch(check), name="twice-upstream-health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def observe(self, observer: UpstreamObserver) -> None:
        """Report to `observer` from now on, starting with every upstream's current state."""
        self._observer = observer
        if self.checking:
            for member in self._members.values():
                observer.health(member.url, member.healthy, changed=False)

    # --- choosing ----------------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return list(self._members)

    def healthy_count(self) -> int:
        return sum(member.healthy for member in self._members.values())

    def pick(self, key: str | None) -> Upstream:
        """The upstream for a call: by `key` when there is one, else round-robin over the healthy ones."""
        members = self._members
        if not members:
            raise LookupError("no vLLM upstream is known yet")
        if key is None:
            healthy = [m for m in members.values() if m.healthy] or list(members.values())
            return healthy[next(self._round_robin) % len(healthy)]
        ranked = rank(key, members)
        for url in ranked:
            if members[url].healthy:
                return members[url]
        return members[ranked[0]]

    def record_call(self, upstream: Upstream, key: str | None, *, track: bool) -> None:
        """A call reached `upstream`; `track`: its key may have further calls (affinity is accounted)."""
        self._observer.call(upstream.url)
        if track and key is not None and self._affinity.record(key, upstream.url):
            self._observer.affinity_break()

    def call_failed(self, upstream: Upstream) -> bool:
        """A real call could not connect: take the upstream out now rather than after the next checks.
        Whether it was in the pool until now (so the call's next attempt goes elsewhere)."""
        if not (self.checking and upstream.healthy and self._holds(upstream)):
            return False
        upstream.successes = 0
        upstream.failures = max(upstream.failures, self._settings.unhealthy_after)
        self._set(upstream, healthy=False)
        return True

    def report(self) -> dict[str, Any]:
        return {
            "mode": "dns" if self._dns else "list" if self.checking else "single",
            "healthy": self.healthy_count(),
            "total": len(self._members),
            "upstreams": {m.url: "up" if m.healthy else "down" for m in self._members.values()},
        }

    # --- health and discovery ----------------------------------------------------------------------------

    def _holds(self, member: Upstream) -> bool:
        """Whether `member` is the pool's own: an address that DNS dropped and found again is a new member,
        and a call that picked the old one must not change the new one's state or metrics."""
        return self._members.get(member.url) is member

    def _set(self, member: Upstream, *, healthy: bool) -> None:
        changed = member.healthy != healthy
        member.healthy = healthy
        if changed:
            log.warning("vLLM upstream %s is %s", member.url, "back" if healthy else "out of the pool")
        self._observer.health(member.url, healthy, changed=changed)

    async def _probe_initial(self, check: HealthCheck, member: Upstream) -> None:
        ok = await check(member.url)
        member.failures, member.successes = (0, 1) if ok else (1, 0)
        member.healthy = ok
        self._observer.health(member.url, ok, changed=False)

    async def _probe(self, check: HealthCheck, member: Upstream) -> None:
        ok = await check(member.url)
        if not self._holds(member):
            return  # DNS dropped it (or dropped and found it again, a new member) while the check was out
        if ok:
            member.successes += 1
            member.failures = 0
            if not member.healthy and member.successes >= self._settings.healthy_after:
                self._set(member, healthy=True)
        else:
            member.failures += 1
            member.successes = 0
            if member.healthy and member.failures >= self._settings.unhealthy_after:
                self._set(member, healthy=False)

    async def _refresh_dns(self) -> None:
        if self._dns is None:
            return
        host, port = self._dns
        self._resolved_at = time.monotonic()
        try:
            addresses = await self._resolver(host, port)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode (a label over 63)
            log.warning(
                "cannot resolve %s (%s); keeping the %d known upstreams", host, exc, len(self._members)
            )
            return
        if not addresses:
            log.warning("%s resolved to nothing; keeping the %d known upstreams", host, len(self._members))
            return
        found = {_url(address, port) for address in addresses}
        for url in found - self._members.keys():
            # A new address takes traffic only once a health check has passed.
            self._members[url] = Upstream(url, healthy=False)
            self._observer.health(url, False, changed=False)
            log.info("vLLM upstream %s discovered", url)
        for url in self._members.keys() - found:
            del self._members[url]
            self._observer.forget(url)
            log.info("vLLM upstream %s no longer resolves", url)

    async def _watch(self, check: HealthCheck) -> None:
        while True:
            await asyncio.sleep(self._settings.health_interval_s)
            if time.monotonic() - self._resolved_at >= self._settings.dns_refresh_s:
                await self._refresh_dns()
            # Every check of the round ends before the next round starts, even when one raises (a dead
            # watcher would freeze the pool; an abandoned check would overlap the next one).
            checks = [self._probe(check, m) for m in list(self._members.values())]
            for result in await asyncio.gather(*checks, return_exceptions=True):
                if isinstance(result, Exception):
                    log.error("upstream health check failed", exc_info=result)
