"""API keys and the admin key: who is calling.

Keys are kept only as sha256 digests; a presented key is hashed and compared with every known digest with
`hmac.compare_digest`, so neither the comparison nor an early exit tells how much of a key matched. A key is
named by its id (`key-` and 16 hex digits of its digest) wherever it must be named: in Redis rate-limit keys,
request attribution, logs. The key itself is never stored, logged or echoed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from app.errors import PermissionDenied, Unauthorized
from app.settings import AuthSettings

DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: an API key's id and tenant (None while auth is off), and the client address."""

    key_id: str | None
    tenant: str
    address: str

    @property
    def limit_subject(self) -> str:
        """Whom rate limits count against: the key, or the client address while auth is off."""
        return self.key_id or f"addr-{hashlib.sha256(self.address.encode()).hexdigest()[:16]}"


@dataclass(frozen=True, slots=True)
class _Key:
    digest: bytes
    key_id: str
    tenant: str


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id(key: str) -> str:
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class KeyRing:
    def __init__(self, settings: AuthSettings) -> None:
        self._keys = tuple(
            _parse(entry) for entry in settings.api_keys.get_secret_value().split(",") if entry.strip()
        )
        admin = settings.admin_key.get_secret_value().strip()
        self._admin = _digest(admin) if admin else None

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def _match(self, token: str) -> _Key | None:
        digest = _digest(token)
        found: _Key | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def caller(self, headers: Mapping[str, str], address: str) -> Caller:
        """The caller of the public API; 401 (`invalid_api_key`) without a known key while keys are set."""
        if not self._keys:
            return Caller(key_id=None, tenant=DEFAULT_TENANT, address=address)
        token = bearer_token(headers)
        if token is None:
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            )
        key = self._match(token)
        if key is None:
            raise Unauthorized("Incorrect API key provided.")
        return Caller(key_id=key.key_id, tenant=key.tenant, address=address)

    def check_admin(self, headers: Mapping[str, str]) -> None:
        """401 without a key or with an unknown one; 403 for a client API key, or while admin is off."""
        token = bearer_token(headers)
        if token is None:
            raise Unauthorized("The admin API needs 'Authorization: Bearer <admin key>'.")
        if self._admin is not None and hmac.compare_digest(_digest(token), self._admin):
            return
        if self._match(token) is not None:
            raise PermissionDenied("This API key may not use the admin API.")
        if self._admin is None:
            raise PermissionDenied("The admin API is off: set TWICE_AUTH__ADMIN_KEY to use it.")
        raise Unauthorized("Incorrect admin key provided.")


def _parse(entry: str) -> _Key:
    tenant, separator, key = entry.strip().partition(":")
    if not separator:
        tenant, key = DEFAULT_TENANT, entry
    key = key.strip()  # a presented token is trimmed (bearer_token): a key kept with spaces never matches
    return _Key(digest=_digest(key), key_id=key_id(key), tenant=tenant.strip() or DEFAULT_TENANT)
