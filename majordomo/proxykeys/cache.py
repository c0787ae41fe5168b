# -*- test-case-name: tests.test_proxykeys_gateway -*-
"""
The gateway's in-memory proxy key cache: which active proxy key (with its
decrypted provider keys) has this hash.

It is kept honest by the API key cache's listener, not one of its own
(L{majordomo.db.keycache.KeyCache.observe}): C{proxy-keys revoke},
C{set-provider} and C{remove-provider} NOTIFY the proxy key's id, revoking
a Majordomo key NOTIFYs that key's id, and either drops the entries it
names; anything else the listener reports (a bare NOTIFY after a rotation,
the listener lost or back) empties the cache.  While the listener is not
known to be listening, nothing is cached and every lookup goes to
PostgreSQL.  Only hits are cached, at most C{max_entries}, least recently
used first out, so proxy keys sprayed at the gateway cannot grow memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from twisted.internet import defer

from majordomo.proxykeys.store import ActiveProxyKey


class ProxyKeyFinder(Protocol):
    """What the cache asks on a miss (L{majordomo.proxykeys.store.ProxyKeyStore})."""

    def find_active(self, key_hash: str) -> Coroutine[Any, Any, ActiveProxyKey | None]: ...


class Listener(Protocol):
    """The listener the cache trusts (L{majordomo.db.keycache.KeyCache})."""

    @property
    def trusted(self) -> bool: ...

    def observe(self, observer: Callable[[str | None], None]) -> None: ...


class ProxyKeyCache:
    """Answers "which active proxy key has this hash?" from memory when it safely can."""

    def __init__(
        self, store: ProxyKeyFinder, listener: Listener, *, max_entries: int = 100_000
    ) -> None:
        self._store = store
        self._listener = listener
        self._max_entries = max_entries
        self._keys: OrderedDict[str, ActiveProxyKey] = OrderedDict()  # hash -> key, LRU first
        # The proxy key ids and Majordomo key ids a NOTIFY may name -> the hashes they drop.
        self._hashes: dict[str, set[str]] = {}
        # Bumped by everything the listener reports: a lookup that raced it is not cached.
        self._generation = 0
        listener.observe(self._heard)

    @property
    def size(self) -> int:
        """How many proxy keys are cached."""
        return len(self._keys)

    def find(self, key_hash: str) -> defer.Deferred[ActiveProxyKey | None]:
        """The active proxy key with this hash, or None (as the store's C{find_active})."""
        trusted = self._listener.trusted
        if trusted:
            found = self._keys.get(key_hash)
            if found is not None:
                self._keys.move_to_end(key_hash)
                return defer.succeed(found)
        generation = self._generation
        d: defer.Deferred[ActiveProxyKey | None] = defer.ensureDeferred(
            self._store.find_active(key_hash)
        )
        if trusted:
            d.addCallback(self._learned, key_hash, generation)
        return d

    def _learned(
        self, found: ActiveProxyKey | None, key_hash: str, generation: int
    ) -> ActiveProxyKey | None:
        if found is not None and self._listener.trusted and generation == self._generation:
            self._forget(key_hash)
            self._keys[key_hash] = found
            for name in (found.id, found.api_key_id):
                self._hashes.setdefault(name, set()).add(key_hash)
            while len(self._keys) > self._max_entries:
                self._forget(next(iter(self._keys)))
        return found

    def _forget(self, key_hash: str) -> None:
        found = self._keys.pop(key_hash, None)
        if found is None:
            return
        for name in (found.id, found.api_key_id):
            hashes = self._hashes.get(name)
            if hashes is not None:
                hashes.discard(key_hash)
                if not hashes:
                    del self._hashes[name]

    def _heard(self, key_id: str | None) -> None:
        """A NOTIFY naming C{key_id}, or (None) a reason to forget everything."""
        self._generation += 1
        if key_id is None:
            self._keys.clear()
            self._hashes.clear()
            return
        for key_hash in list(self._hashes.get(key_id, ())):
            self._forget(key_hash)
