"""
In-memory stand-ins for the proxy's collaborators (L{majordomo.web.proxy.Gateway}),
for tests that drive L{majordomo.web.proxy.ProxyResource} without a database,
a spool or S3.

Each satisfies the Protocol the proxy is typed against, and mypy checks that
it does: this module and L{tests.test_fakes}, which uses each fake through
its Protocol, are in the C{files} mypy checks (pyproject.toml), so a fake
that drifts from its Protocol fails C{make lint}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application import service
from twisted.internet import defer

from majordomo.bodies.document import Exchange
from majordomo.db.keys import ActiveKey, hash_key
from majordomo.pricing import PriceBook


class MemoryRecordSink:
    """
    A L{majordomo.ledger.writer.RecordSink} that keeps every record it is
    given, in order, in C{records}.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def only(self) -> dict[str, Any]:
        """The one record added; an C{AssertionError} if there is not exactly one."""
        if len(self.records) != 1:
            raise AssertionError(f"expected exactly one record, got {len(self.records)}")
        return self.records[0]

    def where(self, **fields: Any) -> list[dict[str, Any]]:
        """The records whose C{fields} have exactly these values."""
        return [
            record
            for record in self.records
            if all(name in record and record[name] == value for name, value in fields.items())
        ]


class FixedPrices:
    """A L{majordomo.pricing.PriceSource} whose book never changes (nothing refreshes it)."""

    def __init__(self, book: PriceBook | None = None) -> None:
        # An empty book prices nothing: every cost is NULL, as for an unknown model.
        self.book = book if book is not None else PriceBook({})


class MemoryBodyStore(service.Service):
    """
    A L{majordomo.bodies.store.BodyStore} that keeps each exchange in C{exchanges} and gives every
    row the same C{columns} (none by default); nothing is ever pending.
    """

    pending = 0
    failures = 0

    def __init__(self, columns: Mapping[str, Any] | None = None) -> None:
        self.exchanges: list[Exchange] = []
        self._columns = dict(columns or {})

    def store(self, exchange: Exchange) -> dict[str, Any]:
        self.exchanges.append(exchange)
        return dict(self._columns)

    def startService(self) -> None:
        super().startService()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        return None


class MemoryKeys:
    """
    The key store as the proxy sees it (a L{majordomo.web.admission.Authenticate}): C{keys} maps key
    hash to the L{ActiveKey} it belongs to.  While C{down} is set, every
    lookup fails, as when PostgreSQL cannot be reached.
    """

    def __init__(self, keys: Mapping[str, ActiveKey] | None = None) -> None:
        self.keys: dict[str, ActiveKey] = dict(keys or {})
        self.down = False

    def add(self, key: str, key_id: str) -> ActiveKey:
        """Make the plaintext C{key} an active key with id C{key_id}."""
        active = ActiveKey(key_id)
        self.keys[hash_key(key)] = active
        return active

    def authenticate(self, key_hash: str) -> defer.Deferred[ActiveKey | None]:
        if self.down:
            return defer.fail(RuntimeError("connection to the database lost"))
        return defer.succeed(self.keys.get(key_hash))
