# -*- test-case-name: tests.test_bodies -*-
"""
Full request and response bodies, kept where C{logging.body_storage} says:
nowhere (C{none}), in the request's own row (C{postgres}), or in S3 as one
gzip JSON object per request (C{s3}, see L{majordomo.bodies.s3}).

The proxy hands every finished request to L{BodyStore.store} on the reactor
thread, before its row is queued.  C{store} answers at once with the row's
extra columns; anything slow (compressing, uploading, writing to disk)
happens later, in threads of the store's own.

Secrets never reach storage: the values of credential headers become
C{REDACTED}, and so does a provider key in the query string (C{?key=...}).
"""

from __future__ import annotations

import codecs
import gzip
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer

from majordomo.providers.secrets import REDACTED, SECRET_HEADERS, redact_path

if TYPE_CHECKING:
    from majordomo.config import Config


@dataclass(frozen=True)
class Exchange:
    """One finished request and its response, as the client saw them."""

    request_id: str  # the row id (a UUID string)
    key_id: str  # the Majordomo API key id (a UUID string)
    arrived: float  # unix time the request arrived
    method: str
    path: str  # as received: may hold ?key=SECRET
    request_headers: list[tuple[str, str]]
    request_body: bytes
    status_code: int
    response_headers: list[tuple[str, str]]
    response_body: bytes  # what the client received (possibly an event stream)


class BodyStore(Protocol):
    """Where the bodies of finished requests go."""

    def store(self, exchange: Exchange) -> dict[str, Any]:
        """
        Take one finished request (on the reactor thread, before its row is
        queued) and return at once the row columns that point at its bodies:
        C{{"s3_key": ...}}, C{{"request_body": ..., "response_body": ...}} or C{{}}.
        """
        ...

    def start(self) -> defer.Deferred[None] | None:
        """Get ready to store (threads, bodies left on disk by an earlier run)."""
        ...

    def stop(self) -> defer.Deferred[None]:
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


class NoBodyStore:
    """C{body_storage: none}: bodies are not kept; rows carry no extra column."""

    pending = 0
    failures = 0

    def store(self, exchange: Exchange) -> dict[str, Any]:
        return {}

    def start(self) -> None:
        return None

    def stop(self) -> defer.Deferred[None]:
        return defer.succeed(None)


class PostgresBodyStore:
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

    def start(self) -> None:
        return None

    def stop(self) -> defer.Deferred[None]:
        return defer.succeed(None)


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


def object_key(exchange: Exchange) -> str:
    """
    The S3 key of a request's bodies, as the guide lays it out:
    C{{api_key_prefix}/{date}/{request_id}.json.gz}, the prefix being the
    first 16 characters of the Majordomo key id and the date the UTC day the
    request arrived.  Deterministic, so the row can carry it before the upload.
    """
    day = datetime.fromtimestamp(exchange.arrived, UTC).strftime("%Y-%m-%d")
    return f"{exchange.key_id[:16]}/{day}/{exchange.request_id}.json.gz"


def redact_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """
    Headers as one JSON object, credentials replaced by C{REDACTED}.  A
    repeated header keeps its first spelling and its values joined by ", ".
    """
    result: dict[str, str] = {}
    spelling: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name, value = _text(raw_name), _text(raw_value)
        lower = name.lower()
        if lower in SECRET_HEADERS:
            value = REDACTED
        name = spelling.setdefault(lower, name)
        if name not in result:
            result[name] = value
        elif value != REDACTED:
            result[name] += ", " + value
    return result


def document(exchange: Exchange) -> dict[str, Any]:
    """The JSON document the guide describes for one request, secrets redacted."""
    return {
        "request_id": exchange.request_id,
        "timestamp": datetime.fromtimestamp(exchange.arrived, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "request": {
            "method": exchange.method,
            "path": redact_path(exchange.path),
            "headers": redact_headers(exchange.request_headers),
            "body": _document_body(exchange.request_body),
        },
        "response": {
            "status_code": exchange.status_code,
            "headers": redact_headers(exchange.response_headers),
            "body": _document_body(exchange.response_body),
        },
    }


def encode_document(exchange: Exchange) -> bytes:
    """The S3 object's bytes: the document as gzip-compressed UTF-8 JSON (CPU-bound: a thread)."""
    text = json.dumps(document(exchange), ensure_ascii=False, separators=(",", ":"))
    # mtime=0: the same exchange always gives the same object.
    return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


def _document_body(body: bytes) -> Any:
    """JSON is embedded as JSON, anything else (an event stream, text) as a string, none as null."""
    if not body:
        return None
    try:
        return json.loads(body, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return body.decode("utf-8", errors="replace")


def _not_json(constant: str) -> Any:
    # NaN and Infinity parse in Python but would make the document invalid JSON.
    raise ValueError(constant)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def make_body_store(
    config: Config, spool_dir: str, reactor: Any = None, **tuning: Any
) -> BodyStore:
    """
    The body store C{logging.body_storage} asks for.  S3 bodies that cannot
    be uploaded wait under C{spool_dir/bodies/}, in at most
    C{storage.spool_max_bytes} of their own.  C{tuning} overrides
    L{majordomo.bodies.s3.UploadTuning} fields (timings in tests).
    """
    storage = config.logging.body_storage
    if storage == "postgres":
        return PostgresBodyStore(config.logging.max_body_size)
    if storage == "s3":
        from majordomo.bodies.s3 import S3BodyStore, UploadTuning

        tuning.setdefault("disk_bytes", config.storage.spool_max_bytes)
        return S3BodyStore(config.s3, spool_dir, reactor=reactor, tuning=UploadTuning(**tuning))
    return NoBodyStore()
