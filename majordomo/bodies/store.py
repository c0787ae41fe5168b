# -*- test-case-name: tests.test_bodies -*-
"""
The body stores, and L{make_body_store}, which picks the one
C{logging.body_storage} asks for: nowhere (C{none}), in the request's own row
(C{postgres}), or in S3 as one gzip JSON object per request (C{s3}, see
L{majordomo.bodies.s3}).

The proxy hands every finished request to L{BodyStore.store} on the reactor
thread, before its row is queued.  C{store} answers at once with the row's
extra columns; anything slow (compressing, uploading, writing to disk)
happens later, in threads of the store's own.
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application import service
from twisted.internet import defer

from majordomo.bodies.document import Exchange
from majordomo.bodies.s3 import S3BodyStore
from majordomo.bodies.tuning import UploadTuning

if TYPE_CHECKING:
    from majordomo.config import Config


class BodyStore(Protocol):
    """
    Where the bodies of finished requests go: a Twisted service (each store
    below is a C{service.Service}), started before the first body and
    stopped after the last.
    """

    def store(self, exchange: Exchange) -> dict[str, Any]:
        """
        Take one finished request (on the reactor thread, before its row is
        queued) and return at once the row columns that point at its bodies:
        C{{"s3_key": ...}}, C{{"request_body": ..., "response_body": ...}} or C{{}}.
        """
        ...

    def startService(self) -> defer.Deferred[None] | None:
        """Get ready to store (threads, bodies left on disk by an earlier run)."""
        ...

    def stopService(self) -> defer.Deferred[None] | None:
        """Finish or set aside on disk what is pending, in bounded time."""
        ...

    @property
    def pending(self) -> int:
        """Bodies not yet in their final place (in memory or waiting on disk)."""
        ...

    @property
    def failures(self) -> int:
        """Attempts to store a body that failed (each is retried)."""
        ...


class NoBodyStore(service.Service):
    """C{body_storage: none}: bodies are not kept; rows carry no extra column."""

    pending = 0
    failures = 0

    def store(self, exchange: Exchange) -> dict[str, Any]:
        return {}


class PostgresBodyStore(service.Service):
    """
    C{body_storage: postgres}: the bodies travel in the row itself, as text
    of at most C{max_body_size} bytes each.  Nothing is pending: the log
    writer owns the row from here on.
    """

    pending = 0
    failures = 0

    def __init__(self, max_body_size: int) -> None:
        self.max_body_size = max_body_size

    def store(self, exchange: Exchange) -> dict[str, Any]:
        return {
            "request_body": body_text(exchange.request_body, self.max_body_size),
            "response_body": body_text(exchange.response_body, self.max_body_size),
        }


def body_text(body: bytes, limit: int) -> str:
    """
    C{body} as text for a C{text} column: UTF-8 with undecodable bytes
    replaced, cut to at most C{limit} bytes of UTF-8 without splitting a
    character.  NUL, which PostgreSQL text cannot hold, becomes U+FFFD.
    Only the first C{limit} bytes are ever decoded, so the cost is bounded.
    """
    whole = len(body) <= limit
    # Not final when cut: a character split by the cut is held back, not replaced.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(body[:limit], final=whole).replace("\x00", "\ufffd")
    encoded = text.encode("utf-8")
    if len(encoded) > limit:  # replacement characters are longer than the bytes they replace
        text = encoded[:limit].decode("utf-8", errors="ignore")
    return text


def make_body_store(
    config: Config, spool_dir: str, reactor: Any = None, **tuning: Any
) -> BodyStore:
    """
    The body store C{logging.body_storage} asks for.  S3 bodies that cannot
    be uploaded wait under C{spool_dir/bodies/}, in at most
    C{storage.spool_max_bytes} of their own.  C{tuning} overrides
    L{majordomo.bodies.tuning.UploadTuning} fields (timings in tests).
    """
    storage = config.logging.body_storage
    if storage == "postgres":
        return PostgresBodyStore(config.logging.max_body_size)
    if storage == "s3":
        tuning.setdefault("disk_bytes", config.storage.spool_max_bytes)
        return S3BodyStore(config.s3, spool_dir, reactor=reactor, tuning=UploadTuning(**tuning))
    return NoBodyStore()
