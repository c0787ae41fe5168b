# -*- test-case-name: tests.test_proxykey_store -*-
"""
Proxy keys in PostgreSQL: the C{proxy_keys} rows (only the SHA-256 of each
C{mdm_pk_...} key is stored, as for Majordomo keys) and their provider keys in
C{proxy_key_providers}, sealed by L{majordomo.vault} and bound to their row.

The store is given the box of C{secrets.encryption_key} and the boxes of
C{secrets.previous_encryption_keys} (L{majordomo.vault.configured_box},
L{majordomo.vault.previous_boxes}): new secrets are sealed with the first,
and a stored secret is opened with whichever box has its row's fingerprint.

Every change a gateway must see (revoke, a provider key set or removed, a
rotation) NOTIFYs C{majordomo_api_keys} with the proxy key's id in the
statement's own transaction, so every running gateway drops it from its cache
when the change commits.
"""

from __future__ import annotations

import builtins
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
from twisted.internet import defer

from majordomo.db import Database
from majordomo.db.keys import KEYS_CHANNEL, KeyNotFound, KeyStore, hash_key
from majordomo.vault import SecretBox, VaultError, provider_key_aad

PROXY_KEY_PREFIX = "mdm_pk_"
PROVIDERS = ("openai", "anthropic", "gemini", "azure")

_COLUMNS = (
    "id::text, majordomo_api_key_id::text, name, description, is_active, created_at, "
    "updated_at, revoked_at, last_used_at, request_count"
)
_NO_KEY = "secrets.encryption_key is not set: provider keys cannot be stored"


def generate_proxy_key() -> str:
    """A new plaintext proxy key: the prefix and 256 random bits."""
    return PROXY_KEY_PREFIX + secrets.token_urlsafe(32)


class ProxyKeyNotFound(Exception):
    """No proxy key has that id."""


class ProviderError(ValueError):
    """A provider name or provider key that cannot be stored (the message never holds the key)."""


@dataclass(frozen=True)
class ProxyKey:
    """One row of C{proxy_keys}; never holds the plaintext key."""

    id: str
    majordomo_api_key_id: str
    name: str
    description: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    request_count: int


@dataclass(frozen=True)
class ProviderMapping:
    """That a proxy key has a provider's key, and which encryption key sealed it (not the key)."""

    provider: str
    key_fingerprint: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ActiveProxyKey:
    """What the gateway needs to swap a proxy key: its ids and its provider keys, opened."""

    id: str
    api_key_id: str
    secrets: Mapping[str, str]  # provider -> the provider key in plaintext

    def __repr__(self) -> str:  # the provider keys are never shown
        return f"ActiveProxyKey(id={self.id!r}, providers={sorted(self.secrets)!r})"


class ProxyKeyStore:
    """CRUD on proxy keys and their provider keys."""

    def __init__(
        self, db: Database, box: SecretBox | None = None, previous: Sequence[SecretBox] = ()
    ) -> None:
        self._db = db
        self._box = box
        self._boxes = _by_fingerprint([*([box] if box else []), *previous])

    async def create(
        self, api_key_id: str, name: str, description: str | None = None
    ) -> tuple[ProxyKey, str]:
        """A new proxy key under a Majordomo key, and its plaintext (shown once, never stored)."""
        plaintext = generate_proxy_key()
        rows = await self._db.run_query(
            f"INSERT INTO proxy_keys (id, majordomo_api_key_id, name, description, key_hash) "
            f"SELECT %s, id, %s, %s, %s FROM api_keys WHERE id = %s RETURNING {_COLUMNS}",
            (str(uuid.uuid4()), name, description, hash_key(plaintext), _api_key_uuid(api_key_id)),
        )
        if not rows:
            raise KeyNotFound(api_key_id)
        return ProxyKey(*rows[0]), plaintext

    async def list(self, api_key_id: str | None = None) -> list[ProxyKey]:
        """Every proxy key (or a Majordomo key's; L{KeyNotFound} if it has none), newest first."""
        if api_key_id is None:
            rows = await self._db.run_query(
                f"SELECT {_COLUMNS} FROM proxy_keys ORDER BY created_at DESC, name"
            )
        else:
            api_key = await KeyStore(self._db).get(api_key_id)
            rows = await self._db.run_query(
                f"SELECT {_COLUMNS} FROM proxy_keys WHERE majordomo_api_key_id = %s "
                "ORDER BY created_at DESC, name",
                (str(api_key.id),),
            )
        return [ProxyKey(*row) for row in rows]

    async def get(self, proxy_key_id: str) -> ProxyKey:
        """The proxy key with that id, or L{ProxyKeyNotFound}."""
        rows = await self._db.run_query(
            f"SELECT {_COLUMNS} FROM proxy_keys WHERE id = %s", (_proxy_key_uuid(proxy_key_id),)
        )
        if not rows:
            raise ProxyKeyNotFound(proxy_key_id)
        return ProxyKey(*rows[0])

    async def revoke(self, proxy_key_id: str) -> ProxyKey:
        """Revoke a proxy key (again: the first revocation time is kept) and tell every gateway."""
        rows = await self._db.run_query(
            f"WITH revoked AS (UPDATE proxy_keys SET is_active = false, "
            f"revoked_at = COALESCE(revoked_at, now()), updated_at = now() "
            f"WHERE id = %s RETURNING {_COLUMNS}) "
            f"SELECT revoked.*, pg_notify(%s, revoked.id) FROM revoked",
            (_proxy_key_uuid(proxy_key_id), KEYS_CHANNEL),
        )
        if not rows:
            raise ProxyKeyNotFound(proxy_key_id)
        return ProxyKey(*rows[0][:-1])

    async def set_provider(self, proxy_key_id: str, provider: str, secret: str) -> None:
        """
        Store (or replace) a proxy key's key for C{provider}, sealed with the
        configured encryption key; a L{VaultError} when there is none.
        """
        if self._box is None:
            raise VaultError(_NO_KEY)
        provider = _provider(provider)
        if (
            not secret
            or secret != secret.strip()
            or not (secret.isascii() and secret.isprintable())
        ):
            raise ProviderError(
                "a provider key must be one line of visible ASCII characters, "
                "without spaces around it"
            )
        key_id = _proxy_key_uuid(proxy_key_id)
        sealed = self._box.seal(secret, provider_key_aad(key_id, provider))
        rows = await self._db.run_query(
            "WITH changed AS ("
            " INSERT INTO proxy_key_providers (proxy_key_id, provider, secret, key_fingerprint)"
            " SELECT id, %s, %s, %s FROM proxy_keys WHERE id = %s"
            " ON CONFLICT (proxy_key_id, provider) DO UPDATE SET secret = excluded.secret,"
            " key_fingerprint = excluded.key_fingerprint, updated_at = now()"
            " RETURNING proxy_key_id)"
            " SELECT pg_notify(%s, proxy_key_id::text) FROM changed",
            (provider, psycopg2.Binary(sealed), self._box.fingerprint, key_id, KEYS_CHANNEL),
        )
        if not rows:
            raise ProxyKeyNotFound(proxy_key_id)

    async def remove_provider(self, proxy_key_id: str, provider: str) -> bool:
        """Forget a proxy key's key for C{provider}; False if it had none."""
        provider = _provider(provider)
        key = await self.get(proxy_key_id)
        rows = await self._db.run_query(
            "WITH gone AS (DELETE FROM proxy_key_providers WHERE proxy_key_id = %s "
            "AND provider = %s RETURNING proxy_key_id) "
            "SELECT pg_notify(%s, proxy_key_id::text) FROM gone",
            (key.id, provider, KEYS_CHANNEL),
        )
        return bool(rows)

    async def list_providers(self, proxy_key_id: str) -> builtins.list[ProviderMapping]:
        """The providers a proxy key has a key for, by name (the keys are not read)."""
        key = await self.get(proxy_key_id)
        rows = await self._db.run_query(
            "SELECT provider, key_fingerprint, created_at, updated_at FROM proxy_key_providers "
            "WHERE proxy_key_id = %s ORDER BY provider",
            (key.id,),
        )
        return [ProviderMapping(*row) for row in rows]

    async def find_active(self, key_hash: str) -> ActiveProxyKey | None:
        """
        The active proxy key with this hash, under an active Majordomo key,
        with every provider key opened; None if there is none.  A
        L{VaultError} when a provider key is sealed with a key this store
        was not given, or does not open (tampered with, or moved).
        """
        rows = await self._db.run_query(
            "SELECT p.id::text, p.majordomo_api_key_id::text, m.provider, m.secret, "
            "m.key_fingerprint FROM proxy_keys p "
            "JOIN api_keys a ON a.id = p.majordomo_api_key_id AND a.is_active "
            "LEFT JOIN proxy_key_providers m ON m.proxy_key_id = p.id "
            "WHERE p.key_hash = %s AND p.is_active",
            (key_hash,),
            retry_for=2.0,
        )
        if not rows:
            return None
        key_id, api_key_id = rows[0][0], rows[0][1]
        opened = {
            provider: self._open(key_id, provider, sealed, fingerprint)
            for _, _, provider, sealed, fingerprint in rows
            if provider is not None
        }
        return ActiveProxyKey(key_id, api_key_id, opened)

    def _open(self, key_id: str, provider: str, sealed: Any, fingerprint: str) -> str:
        return _box_for(self._boxes, fingerprint).open(sealed, provider_key_aad(key_id, provider))

    async def check_keys(self) -> None:
        """
        A L{VaultError} if any stored provider key was sealed with an
        encryption key this store was not given (run at startup, so a wrong
        key is one clear error rather than failures request by request).
        """
        rows = await self._db.run_query(
            "SELECT key_fingerprint, count(*) FROM proxy_key_providers "
            "GROUP BY key_fingerprint ORDER BY 2 DESC, 1"
        )
        unknown = [(fp, count) for fp, count in rows if fp not in self._boxes]
        if unknown:
            count = sum(n for _, n in unknown)
            raise VaultError(
                f"{count} stored provider key(s) are sealed with another encryption key "
                f"(fingerprint {', '.join(fp for fp, _ in unknown)}); set "
                "secrets.encryption_key, or secrets.previous_encryption_keys during a "
                "rotation, to the key that sealed them"
            )


async def rotate(db: Database, new: SecretBox, old: Sequence[SecretBox]) -> int:
    """
    Re-seal every stored provider key under C{new}, in one transaction: each
    is opened with the box of its fingerprint (C{new} or one of C{old}) and
    sealed again under a fresh nonce, so no old ciphertext remains.  Any row
    that does not open leaves every row as it was (a L{VaultError}).  Each
    proxy key with a provider key is NOTIFYd.  Returns the rows re-sealed.
    """
    boxes = _by_fingerprint([new, *old])
    resealed: int = await db.run_interaction(_reseal_all, new, boxes)
    return resealed


@defer.inlineCallbacks
def _reseal_all(cursor: Any, new: SecretBox, boxes: dict[str, SecretBox]) -> Any:
    """The transaction of L{rotate}: lock, open and seal again, write back, NOTIFY."""
    yield cursor.execute(
        "SELECT proxy_key_id::text, provider, secret, key_fingerprint FROM proxy_key_providers "
        "ORDER BY proxy_key_id, provider FOR UPDATE"
    )
    rows = cursor.fetchall()
    ids, providers, sealed = [], [], []
    for key_id, provider, secret, fingerprint in rows:
        aad = provider_key_aad(key_id, provider)
        ids.append(key_id)
        providers.append(provider)
        sealed.append(
            psycopg2.Binary(new.seal(_box_for(boxes, fingerprint).open(secret, aad), aad))
        )
    if rows:
        yield cursor.execute(
            "UPDATE proxy_key_providers m SET secret = r.secret, key_fingerprint = %s, "
            "updated_at = now() FROM unnest(%s::uuid[], %s::text[], %s::bytea[]) "
            "AS r (proxy_key_id, provider, secret) "
            "WHERE m.proxy_key_id = r.proxy_key_id AND m.provider = r.provider",
            (new.fingerprint, ids, providers, sealed),
        )
        yield cursor.execute(
            "SELECT pg_notify(%s, id::text) FROM unnest(%s::uuid[]) AS ids (id) GROUP BY id",
            (KEYS_CHANNEL, sorted(set(ids))),
        )
    return len(rows)


def _by_fingerprint(boxes: Sequence[SecretBox]) -> dict[str, SecretBox]:
    return {box.fingerprint: box for box in reversed(boxes)}


def _box_for(boxes: Mapping[str, SecretBox], fingerprint: str) -> SecretBox:
    box = boxes.get(fingerprint)
    if box is None:
        raise VaultError(
            f"a stored provider key is sealed with another encryption key (fingerprint "
            f"{fingerprint}); set secrets.encryption_key or secrets.previous_encryption_keys"
        )
    return box


def _provider(name: str) -> str:
    if name not in PROVIDERS:
        raise ProviderError(f"provider must be one of {', '.join(PROVIDERS)}")
    return name


def _proxy_key_uuid(proxy_key_id: str) -> str:
    try:
        return str(uuid.UUID(proxy_key_id))
    except (ValueError, TypeError, AttributeError):
        raise ProxyKeyNotFound(proxy_key_id) from None


def _api_key_uuid(api_key_id: str) -> str:
    try:
        return str(uuid.UUID(api_key_id))
    except (ValueError, TypeError, AttributeError):
        raise KeyNotFound(api_key_id) from None
