# -*- test-case-name: tests.test_keys -*-
"""
Majordomo API keys: generation, hashing and the key store shared by the
C{majordomo keys} commands and the gateway.

The plaintext key (C{mdm_sk_...}) is shown once, when created; only its
SHA-256 hex digest is stored, so a database dump reveals no usable key.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twisted.internet import defer

from majordomo.db import Database
from majordomo.metadata import metadata_name
from majordomo.policy.rules import POLICY_COLUMNS, Policy, policy_from_row
from majordomo.providers.secrets import sha256_hex

KEY_PREFIX = "mdm_sk_"
# Every gateway LISTENs on this channel; `keys revoke` NOTIFYs it.
KEYS_CHANNEL = "majordomo_api_keys"


def generate_key() -> str:
    """A new plaintext API key: the prefix and 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    """The SHA-256 hex digest under which a key (or provider key) is stored."""
    return sha256_hex(plaintext)


@dataclass(frozen=True)
class ApiKey:
    """One row of C{api_keys}; never holds the plaintext key."""

    id: str  # a UUID, as text
    name: str
    description: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    request_count: int


_COLUMNS = (
    "id, name, description, is_active, created_at, updated_at, revoked_at, "
    "last_used_at, request_count"
)


@dataclass(frozen=True)
class ActiveKey:
    """What the gateway needs to know about the key a request presents."""

    id: str
    # Metadata names copied into indexed_metadata (`majordomo metadata activate`).
    indexed_metadata: frozenset[str] = frozenset()
    # The key's budget, model rules and rate limits (`majordomo keys policy`), if any.
    policy: Policy | None = None


def _row_to_key(row: Any) -> ApiKey:
    return ApiKey(*row)


class KeyNotFound(Exception):
    """No key has that id."""


class KeyStore:
    """CRUD on C{api_keys}, returning Deferreds."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @defer.inlineCallbacks
    def create(self, name: str, description: str | None = None) -> Any:
        """Create a key; fires with (ApiKey, plaintext key)."""
        plaintext = generate_key()
        rows = yield self._db.run_query(
            f"INSERT INTO api_keys (id, name, description, key_hash) "
            f"VALUES (%s, %s, %s, %s) RETURNING {_COLUMNS}",
            (str(uuid.uuid4()), name, description, hash_key(plaintext)),
        )
        return _row_to_key(rows[0]), plaintext

    @defer.inlineCallbacks
    def list(self) -> Any:
        """Every key, newest first."""
        rows = yield self._db.run_query(
            f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at DESC, name"
        )
        return [_row_to_key(r) for r in rows]

    @defer.inlineCallbacks
    def get(self, key_id: str) -> Any:
        """The key with id C{key_id}, or a L{KeyNotFound} failure."""
        rows = yield self._db.run_query(
            f"SELECT {_COLUMNS} FROM api_keys WHERE id = %s", (_as_uuid(key_id),)
        )
        if not rows:
            raise KeyNotFound(key_id)
        return _row_to_key(rows[0])

    @defer.inlineCallbacks
    def update(self, key_id: str, name: str | None, description: str | None) -> Any:
        """Change a key's name and/or description."""
        rows = yield self._db.run_query(
            f"UPDATE api_keys SET name = COALESCE(%s, name), "
            f"description = COALESCE(%s, description), updated_at = now() "
            f"WHERE id = %s RETURNING {_COLUMNS}",
            (name, description, _as_uuid(key_id)),
        )
        if not rows:
            raise KeyNotFound(key_id)
        return _row_to_key(rows[0])

    @defer.inlineCallbacks
    def revoke(self, key_id: str) -> Any:
        """
        Revoke a key and tell every running gateway at once (NOTIFY is sent
        when the UPDATE commits, in the same statement's transaction).
        """
        rows = yield self._db.run_query(
            f"WITH revoked AS (UPDATE api_keys SET is_active = false, "
            f"revoked_at = COALESCE(revoked_at, now()), updated_at = now() "
            f"WHERE id = %s RETURNING {_COLUMNS}) "
            f"SELECT revoked.*, pg_notify(%s, revoked.id::text) FROM revoked",
            (_as_uuid(key_id), KEYS_CHANNEL),
        )
        if not rows:
            raise KeyNotFound(key_id)
        return _row_to_key(rows[0][:-1])

    @defer.inlineCallbacks
    def find_active(self, key_hash: str) -> Any:
        """The L{ActiveKey} with this hash, or None."""
        rows = yield self._db.run_query(
            "SELECT id::text, ARRAY(SELECT key_name FROM llm_requests_metadata_keys m "
            "WHERE m.majordomo_api_key_id = api_keys.id AND m.is_active), "
            f"p.majordomo_api_key_id IS NOT NULL, {POLICY_COLUMNS} "
            "FROM api_keys LEFT JOIN key_policies p ON p.majordomo_api_key_id = api_keys.id "
            "WHERE key_hash = %s AND is_active",
            (key_hash,),
            retry_for=2.0,
        )
        if not rows:
            return None
        key_id, indexed, has_policy, *policy = rows[0]
        return ActiveKey(
            key_id, frozenset(indexed), policy_from_row(policy) if has_policy else None
        )


@dataclass(frozen=True)
class MetadataKey:
    """One metadata name seen on a key's requests (llm_requests_metadata_keys)."""

    name: str
    is_active: bool
    request_count: int
    last_seen_at: datetime | None
    hll: list[int] | None


class MetadataRegistry:
    """The metadata names each key has used, and which are indexed."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @defer.inlineCallbacks
    def list(self, key_id: str) -> Any:
        """Every metadata name of a key, most used first."""
        yield KeyStore(self._db).get(key_id)  # KeyNotFound for an unknown key
        rows = yield self._db.run_query(
            "SELECT key_name, is_active, request_count, last_seen_at, hll "
            "FROM llm_requests_metadata_keys WHERE majordomo_api_key_id = %s "
            "ORDER BY request_count DESC, key_name",
            (_as_uuid(key_id),),
        )
        return [MetadataKey(*row) for row in rows]

    @defer.inlineCallbacks
    def set_active(self, key_id: str, name: str, active: bool) -> Any:
        """
        Index (or stop indexing) a metadata name for a key, even one not seen
        yet; every running gateway applies it from its next request on (the
        key's cache entry is dropped through the same NOTIFY as a revocation).
        """
        name = metadata_name(name)  # MetadataError for a name no request can carry
        yield KeyStore(self._db).get(key_id)
        yield self._db.run_query(
            "WITH changed AS ("
            " INSERT INTO llm_requests_metadata_keys (majordomo_api_key_id, key_name, is_active)"
            " VALUES (%s, %s, %s) ON CONFLICT (majordomo_api_key_id, key_name)"
            " DO UPDATE SET is_active = excluded.is_active RETURNING majordomo_api_key_id)"
            " SELECT pg_notify(%s, majordomo_api_key_id::text) FROM changed",
            (_as_uuid(key_id), name, active, KEYS_CHANNEL),
        )


def _as_uuid(key_id: str) -> str:
    try:
        return str(uuid.UUID(key_id))
    except ValueError:
        raise KeyNotFound(key_id) from None
