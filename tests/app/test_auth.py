"""API keys and the admin key (app/auth.py): parsing the key list, matching a presented key, the caller.

The gateway-level behaviour (401/403 over HTTP, keys absent from Redis) is in tests/reliability and
tests/experiments; these pin the module's own rules directly.
"""

from __future__ import annotations

import hashlib

import pytest
from pydantic import SecretStr

from app.auth import DEFAULT_TENANT, Caller, KeyRing, bearer_token, key_id
from app.errors import PermissionDenied, Unauthorized
from app.settings import AuthSettings

KEY = "sk-test-0123456789abcdef"
ADMIN = "admin-0123456789abcdef"


def ring(api_keys: str = "", admin_key: str = "") -> KeyRing:
    return KeyRing(AuthSettings(api_keys=SecretStr(api_keys), admin_key=SecretStr(admin_key)))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_key_id_is_key_dash_and_the_first_16_hex_digits_of_its_sha256() -> None:
    expected = "key-" + hashlib.sha256(KEY.encode()).hexdigest()[:16]
    assert key_id(KEY) == expected
    assert KEY not in key_id(KEY)
    assert key_id(KEY) != key_id(KEY + "x")


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        ("  Bearer abc", "abc"),
    ],
)
def test_the_bearer_scheme_is_read_case_insensitively_and_the_token_trimmed(header: str, token: str) -> None:
    assert bearer_token({"authorization": header}) == token


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer    ", "abc", "Token abc", ""])
def test_anything_but_a_bearer_token_is_no_token(header: str) -> None:
    assert bearer_token({"authorization": header}) is None


def test_no_authorization_header_is_no_token() -> None:
    assert bearer_token({}) is None


def test_a_key_list_gives_each_key_its_tenant_or_the_default() -> None:
    keys = ring(f" acme:{KEY} , plain-key,:no-tenant-key, ,")
    acme = keys.caller(bearer(KEY), "10.0.0.1")
    assert (acme.key_id, acme.tenant) == (key_id(KEY), "acme")
    plain = keys.caller(bearer("plain-key"), "10.0.0.1")
    assert (plain.key_id, plain.tenant) == (key_id("plain-key"), DEFAULT_TENANT)
    # An empty tenant before the colon is the default tenant, and the key is what follows the colon.
    unnamed = keys.caller(bearer("no-tenant-key"), "10.0.0.1")
    assert unnamed.tenant == DEFAULT_TENANT
    with pytest.raises(Unauthorized):
        keys.caller(bearer(":no-tenant-key"), "10.0.0.1")


def test_keys_are_split_at_the_first_colon_so_a_key_may_hold_colons() -> None:
    keys = ring("acme:sk:with:colons")
    assert keys.caller(bearer("sk:with:colons"), "a").tenant == "acme"


def test_an_empty_key_list_turns_auth_off_and_everyone_is_the_default_tenant() -> None:
    keys = ring(" , ,")
    assert not keys.enabled
    caller = keys.caller({}, "192.0.2.7")
    assert caller == Caller(key_id=None, tenant=DEFAULT_TENANT, address="192.0.2.7")


def test_a_key_that_differs_in_its_last_byte_is_refused() -> None:
    keys = ring(KEY)
    assert keys.caller(bearer(KEY), "a").key_id == key_id(KEY)
    for wrong in (KEY[:-1] + "0", KEY[:-1], KEY + "f", KEY.upper()):
        with pytest.raises(Unauthorized, match="Incorrect API key") as refused:
            keys.caller(bearer(wrong), "a")
        assert wrong not in refused.value.message


def test_a_missing_key_is_told_how_to_send_one() -> None:
    with pytest.raises(Unauthorized, match="Authorization: Bearer") as refused:
        ring(KEY).caller({"authorization": "Basic xyz"}, "a")
    assert refused.value.status_code == 401
    assert refused.value.code == "invalid_api_key"


def test_the_same_key_listed_twice_matches_its_last_tenant() -> None:
    """Every listed digest is compared (no early exit), so the last match is the one that counts."""
    keys = ring(f"first:{KEY},second:{KEY}")
    assert keys.caller(bearer(KEY), "a").tenant == "second"


def test_limits_count_against_the_key_or_a_hash_of_the_address_without_one() -> None:
    with_key = ring(KEY).caller(bearer(KEY), "198.51.100.1")
    assert with_key.limit_subject == key_id(KEY)
    anonymous = ring().caller({}, "198.51.100.1")
    subject = anonymous.limit_subject
    assert subject == "addr-" + hashlib.sha256(b"198.51.100.1").hexdigest()[:16]
    assert "198.51.100.1" not in subject
    assert ring().caller({}, "198.51.100.2").limit_subject != subject


def test_the_admin_key_is_accepted_and_nothing_else_is() -> None:
    keys = ring(KEY, ADMIN)
    keys.check_admin(bearer(ADMIN))  # no exception: admitted
    with pytest.raises(Unauthorized, match="Incorrect admin key"):
        keys.check_admin(bearer(ADMIN[:-1] + "X"))
    with pytest.raises(Unauthorized, match="needs"):
        keys.check_admin({})


def test_a_client_key_on_the_admin_api_is_forbidden_not_unauthorized() -> None:
    with pytest.raises(PermissionDenied, match="may not use the admin API") as refused:
        ring(KEY, ADMIN).check_admin(bearer(KEY))
    assert refused.value.status_code == 403


def test_without_an_admin_key_the_admin_api_is_off() -> None:
    keys = ring(KEY)
    with pytest.raises(PermissionDenied, match="TWICE_AUTH__ADMIN_KEY"):
        keys.check_admin(bearer("anything"))
    with pytest.raises(PermissionDenied, match="may not use"):
        keys.check_admin(bearer(KEY))
    # A blank admin key setting is no admin key, whatever is presented.
    with pytest.raises(PermissionDenied, match="off"):
        ring(KEY, "   ").check_admin(bearer("   x"))


def test_the_admin_key_works_while_client_auth_is_off() -> None:
    keys = ring("", ADMIN)
    assert not keys.enabled
    keys.check_admin(bearer(ADMIN))
    with pytest.raises(Unauthorized):
        keys.check_admin(bearer("other"))


def test_spaces_around_a_tenants_colon_are_not_part_of_the_key() -> None:
    """`acme: sk-...` (as a person types a list) names the key `sk-...`: a presented token is trimmed, so a
    key kept with its leading space could never match."""
    keys = ring(f"acme : {KEY} , beta:  other-key")
    assert keys.caller(bearer(KEY), "a").tenant == "acme"
    assert keys.caller(bearer("other-key"), "a").tenant == "beta"
