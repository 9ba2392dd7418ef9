"""Experiments end to end: two gateway processes sharing one Redis (database 12), the vLLM stand-in behind."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.experiments.support import (
    KEY_ALPHA,
    KEY_BETA,
    admin,
    bearer,
    chat,
    flushed,
    gateway_env,
    metric_value,
    two_gateways,
)
from tests.support.polling import eventually

DB = 12

SPLIT = {
    "name": "split",
    "description": "plain against psr",
    "variants": [
        {"name": "plain", "weight": 50, "strategies": "none"},
        {"name": "guarded", "weight": 50, "strategies": "psr", "rounds": 2},
    ],
}


@pytest.fixture(scope="module")
def gateways(stub_url: str) -> Iterator[tuple[str, str]]:
    flushed(DB)
    with two_gateways(stub_url, gateway_env(DB)) as pair:
        yield pair


@pytest.fixture
def store(gateways: tuple[str, str]) -> Iterator[redis.Redis]:
    client = flushed(DB)
    # Both replicas notice the emptied store (its version key is gone) before the test starts.
    first, second = gateways
    eventually(lambda: no_experiments(first) and no_experiments(second))
    yield client
    client.close()


def no_experiments(base: str) -> bool:
    data: list[object] = admin("GET", base, "/experiments").json()["data"]
    return not data


def variant_of(base: str, subject: str, **headers: str) -> str:
    response = chat(base, headers={"X-Twice-Experiment": "split", "X-Twice-Subject": subject, **headers})
    assert response.status_code == 200, response.text
    return response.headers["x-twice-variant"]


def test_same_subject_same_variant_on_both_replicas(gateways: tuple[str, str], store: redis.Redis) -> None:
    first, second = gateways
    created = admin("POST", first, "/experiments", SPLIT)
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1
    eventually(lambda: admin("GET", second, "/experiments").json()["data"])
    subjects = [f"subject-{i}" for i in range(24)]
    on_first = [variant_of(first, s) for s in subjects]
    on_second = [variant_of(second, s) for s in subjects]
    assert on_first == on_second
    assert set(on_first) == {"plain", "guarded"}  # 24 subjects at 50/50: both sides are used
    # The request's `user` field wins over X-Twice-Subject.
    by_user = chat(first, headers={"X-Twice-Experiment": "split", "X-Twice-Subject": "x"}, user="subject-3")
    assert by_user.headers["x-twice-variant"] == on_first[3]


def test_variant_is_echoed_and_labels_the_request_metric(
    gateways: tuple[str, str], store: redis.Redis
) -> None:
    first, _ = gateways
    assert admin("POST", first, "/experiments", SPLIT).status_code == 201
    subjects = {variant_of(first, f"s{i}"): f"s{i}" for i in range(30)}
    guarded = chat(first, headers={"X-Twice-Experiment": "split", "X-Twice-Subject": subjects["guarded"]})
    assert guarded.headers["x-twice-strategy-applied"] == "psr"
    twice = guarded.json()["twice"]
    assert (twice["experiment"], twice["variant"]) == ("split", "guarded")
    assert twice["rounds"]["granted"] == 2
    before = metric_value(first, "twice_requests_total", outcome="ok", stream="true", variant="plain")
    streamed = httpx.post(
        f"{first}/v1/chat/completions",
        json={
            "model": "stub-model",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "stream": True,
        },
        headers={**bearer(KEY_ALPHA), "X-Twice-Experiment": "split", "X-Twice-Subject": subjects["plain"]},
        timeout=30,
    )
    assert streamed.headers["x-twice-variant"] == "plain"
    assert streamed.text.rstrip().endswith("data: [DONE]")
    # The pass-through relay counts its stream when it ends: labelled with the variant all the same.
    after = metric_value(first, "twice_requests_total", outcome="ok", stream="true", variant="plain")
    assert after == before + 1
    assert metric_value(first, "twice_requests_total", outcome="ok", stream="false", variant="guarded") >= 1


def test_unknown_experiment_is_a_400_naming_the_header(gateways: tuple[str, str], store: redis.Redis) -> None:
    response = chat(gateways[0], headers={"X-Twice-Experiment": "nope"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "X-Twice-Experiment"
    assert error["code"] == "unknown_experiment"


def test_strategy_header_does_not_override_without_permission(
    gateways: tuple[str, str], store: redis.Redis
) -> None:
    first, _ = gateways
    assert admin("POST", first, "/experiments", SPLIT).status_code == 201
    subject = next(s for s in (f"s{i}" for i in range(30)) if variant_of(first, s) == "plain")
    response = chat(
        first, headers={"X-Twice-Experiment": "split", "X-Twice-Subject": subject, "X-Twice-Strategy": "psr"}
    )
    assert response.headers["x-twice-variant"] == "plain"
    assert response.headers["x-twice-strategy-applied"] == "none"


def test_admin_changes_reach_the_other_replica_within_seconds(
    gateways: tuple[str, str], store: redis.Redis
) -> None:
    first, second = gateways
    assert admin("POST", first, "/experiments", SPLIT).status_code == 201
    eventually(lambda: admin("GET", second, "/experiments").json()["data"])
    subjects = [f"w{i}" for i in range(12)]
    patched = admin("PATCH", first, "/experiments/split", {"weights": {"plain": 0, "guarded": 1}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["version"] == 2
    _, seconds = eventually(lambda: all(variant_of(second, s) == "guarded" for s in subjects), timeout=5)
    assert seconds < 3.5
    paused = admin("POST", first, "/experiments/split/pause")
    assert paused.json()["version"] == 3
    assert paused.json()["paused"] is True
    # Paused: everybody gets the control (the first variant), whatever the weights say.
    eventually(lambda: all(variant_of(second, s) == "plain" for s in subjects), timeout=5)
    history = admin("GET", first, "/experiments/split/history").json()
    assert [entry["version"] for entry in history] == [3, 2, 1]
    assert [entry["action"] for entry in history] == ["update", "update", "create"]
    stale = admin("PUT", first, "/experiments/split?expected_version=1", SPLIT)
    assert stale.status_code == 409
    deleted = admin("DELETE", first, "/experiments/split")
    assert deleted.json() == {"name": "split", "version": 4, "deleted": True}
    eventually(lambda: chat(second, headers={"X-Twice-Experiment": "split"}).status_code == 400, timeout=5)


def test_a_definition_the_gateway_cannot_read_is_a_409_and_can_still_be_deleted(
    gateways: tuple[str, str], store: redis.Redis
) -> None:
    first, second = gateways
    assert admin("POST", first, "/experiments", SPLIT).status_code == 201
    chat(first, headers={"X-Twice-Experiment": "split", "X-Twice-Subject": "s1"})
    stats = [key for key in store.keys("*exp:stats:split:*")]
    assert stats
    # What a newer gateway might have written: a field this one does not know.
    (defs,) = store.keys("*exp:defs")
    store.hset(defs, "split", json.dumps({**SPLIT, "owner": "team-b"}))
    for base in (first, second):
        for method, path in (("GET", "/experiments/split"), ("PATCH", "/experiments/split")):
            answer = admin(method, base, path, {"paused": True} if method == "PATCH" else None)
            assert answer.status_code == 409, answer.text
            assert "replace it (PUT) or delete it" in answer.json()["error"]["message"]
    deleted = admin("DELETE", second, "/experiments/split")
    assert deleted.status_code == 200, deleted.text
    assert not store.exists(*stats)  # a name created again starts its results from nothing


def test_admin_api_needs_the_admin_key(gateways: tuple[str, str], store: redis.Redis) -> None:
    base = gateways[0]
    assert httpx.get(f"{base}/admin/experiments", timeout=5).status_code == 401
    wrong = httpx.get(f"{base}/admin/experiments", headers=bearer("not-a-key"), timeout=5)
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    client_key = httpx.get(f"{base}/admin/experiments", headers=bearer(KEY_ALPHA), timeout=5)
    assert client_key.status_code == 403
    bad = admin(
        "POST", base, "/experiments", {"name": "x", "variants": [{"name": "a", "strategies": "magic"}]}
    )
    assert bad.status_code == 400
    assert "magic" in bad.json()["error"]["message"]


def test_feedback_is_attributed_and_results_compare_with_the_control(
    gateways: tuple[str, str], store: redis.Redis
) -> None:
    first, second = gateways
    assert admin("POST", first, "/experiments", SPLIT).status_code == 201
    eventually(lambda: admin("GET", second, "/experiments").json()["data"])
    served: dict[str, list[str]] = {"plain": [], "guarded": []}
    for i in range(16):
        base = (first, second)[i % 2]
        # An UNSAFE prompt makes psr on the stand-in refuse (content_filter): counted as a refusal.
        response = chat(
            base, headers={"X-Twice-Experiment": "split", "X-Twice-Subject": f"f{i}"}, content="UNSAFE"
        )
        served[response.headers["x-twice-variant"]].append(response.headers["x-twice-request-id"])
    assert served["plain"]
    assert len(served["guarded"]) >= 2
    scores = {"plain": [0.2, 0.4, 0.3, 0.1], "guarded": [0.9, 0.7, 0.8, 1.0]}
    given: dict[str, list[float]] = {"plain": [], "guarded": []}
    for variant, ids in served.items():
        for request_id, score in zip(ids, scores[variant] * 4, strict=False):
            base = (first, second)[len(given[variant]) % 2]
            body = {"request_id": request_id, "score": score}
            recorded = httpx.post(f"{base}/v1/feedback", json=body, headers=bearer(KEY_ALPHA), timeout=5)
            assert recorded.status_code == 200, recorded.text
            assert recorded.json()["variant"] == variant
            given[variant].append(score)
    request_id = served["plain"][0]
    again = httpx.post(
        f"{first}/v1/feedback",
        json={"request_id": request_id, "thumbs": "up"},
        headers=bearer(KEY_ALPHA),
        timeout=5,
    )
    assert again.status_code == 409
    # Another key cannot score (or learn about) this key's request.
    other = httpx.post(
        f"{first}/v1/feedback",
        json={"request_id": request_id, "score": 1},
        headers=bearer(KEY_BETA),
        timeout=5,
    )
    assert other.status_code == 404
    unknown = httpx.post(
        f"{first}/v1/feedback",
        json={"request_id": "chatcmpl-none", "score": 1},
        headers=bearer(KEY_ALPHA),
        timeout=5,
    )
    assert unknown.status_code == 404
    both = httpx.post(
        f"{first}/v1/feedback",
        json={"request_id": request_id, "score": 1, "thumbs": "up"},
        headers=bearer(KEY_ALPHA),
        timeout=5,
    )
    assert both.status_code == 400

    results = admin("GET", second, "/experiments/split/results").json()
    rows = {row["name"]: row for row in results["variants"]}
    assert results["control"] == "plain"
    for variant, ids in served.items():
        row = rows[variant]
        assert row["requests"] == len(ids)
        assert row["feedback"]["count"] == len(given[variant])
        assert row["feedback"]["mean"] == pytest.approx(sum(given[variant]) / len(given[variant]))
        assert row["tokens"]["usage_reported"] == len(ids)
        assert row["latency_s"]["mean"] > 0
    assert rows["guarded"]["refusals"] == len(served["guarded"])
    assert rows["plain"]["refusals"] == 0
    comparison = rows["guarded"]["feedback_vs_control"]
    difference = rows["guarded"]["feedback"]["mean"] - rows["plain"]["feedback"]["mean"]
    assert comparison["difference"] == pytest.approx(difference)
    low, high = comparison["ci95"]
    assert low < difference < high
    assert "feedback_vs_control" not in rows["plain"]
