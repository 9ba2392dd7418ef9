"""Pure parts of app/upstreams.py: rendezvous ranking, affinity accounting, settings parsing."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from pydantic import ValidationError

from app.settings import Settings, VllmSettings, parse_dns_target
from app.upstreams import AffinityTracker, UpstreamPool, rank

URLS = [f"http://10.0.0.{n}:8000" for n in range(1, 5)]


def test_a_key_ranks_the_upstreams_the_same_way_every_time() -> None:
    assert rank("chatcmpl-1", URLS) == rank("chatcmpl-1", list(reversed(URLS)))
    assert sorted(rank("chatcmpl-1", URLS)) == sorted(URLS)


def test_keys_spread_evenly() -> None:
    firsts = Counter(rank(uuid.uuid4().hex, URLS)[0] for _ in range(4000))
    assert set(firsts) == set(URLS)
    for count in firsts.values():
        assert 800 <= count <= 1200, firsts


def test_removing_an_upstream_moves_only_its_own_keys_each_to_its_next_ranked() -> None:
    keys = [uuid.uuid4().hex for _ in range(2000)]
    gone = URLS[1]
    rest = [url for url in URLS if url != gone]
    for key in keys:
        before = rank(key, URLS)
        after = rank(key, rest)
        if before[0] != gone:
            assert after[0] == before[0]
        else:
            assert after[0] == before[1]


def test_pool_pick_skips_unhealthy_upstreams_and_falls_back_when_none_is_healthy() -> None:
    pool = UpstreamPool(VllmSettings(upstreams=URLS))
    key = "chatcmpl-abc"
    preferred = rank(key, URLS)
    first = pool.pick(key)
    assert first.url == preferred[0]
    pool.call_failed(first)
    assert pool.pick(key).url == preferred[1]
    assert pool.healthy_count() == 3
    while pool.healthy_count():
        pool.call_failed(pool.pick(None))
    assert pool.pick(key).url == preferred[0]  # nobody healthy: ask the first choice rather than refuse


def test_without_a_key_calls_go_round_robin_over_healthy_upstreams() -> None:
    pool = UpstreamPool(VllmSettings(upstreams=URLS[:3]))
    pool.call_failed(pool.pick("k"))
    picked = Counter(pool.pick(None).url for _ in range(10))
    assert len(picked) == 2
    assert set(picked.values()) == {5}


def test_affinity_breaks_count_once_per_key() -> None:
    tracker = AffinityTracker(capacity=2)
    assert not tracker.record("a", "u1")
    assert not tracker.record("a", "u1")
    assert tracker.record("a", "u2")
    assert not tracker.record("a", "u1")
    assert not tracker.record("a", "u3")
    assert not tracker.record("b", "u1")
    assert not tracker.record("c", "u1")  # evicts "a"
    assert not tracker.record("a", "u2")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://a:1, http://b:2/", ["http://a:1", "http://b:2/"]),
        ('["http://a:1", "http://b:2"]', ["http://a:1", "http://b:2"]),
        ("", []),
    ],
)
def test_upstreams_accept_a_comma_list_or_json(
    value: str, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWICE_VLLM__UPSTREAMS", value)
    assert Settings().vllm.upstreams == expected


def test_a_list_and_a_dns_name_together_are_refused() -> None:
    with pytest.raises(ValidationError, match="not both"):
        VllmSettings(upstreams=["http://a:1"], upstreams_dns="vllm:8000")


def test_trailing_slashes_do_not_make_a_second_upstream() -> None:
    pool = UpstreamPool(VllmSettings(upstreams=["http://a:1/", "http://b:2"]))
    assert pool.urls == ["http://a:1", "http://b:2"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("vllm-headless:8000", ("vllm-headless", 8000)),
        ("http://vllm.llm.svc.cluster.local:8000/", ("vllm.llm.svc.cluster.local", 8000)),
        ("[::1]:9000", ("::1", 9000)),
    ],
)
def test_dns_targets_parse(value: str, expected: tuple[str, int]) -> None:
    assert parse_dns_target(value) == expected


@pytest.mark.parametrize("value", ["vllm", "vllm:http", ":8000"])
def test_bad_dns_targets_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_dns_target(value)
