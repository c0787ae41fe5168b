# -*- test-case-name: tests.test_bodies -*-
"""
One finished request as L{Exchange}, and the JSON document its bodies are kept
as in S3: named by L{object_key}, secrets redacted, gzip-compressed by
L{encode_document}.

Secrets never reach storage: the values of credential headers become
C{REDACTED}, and so does a provider key in the query string (C{?key=...}).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from majordomo.providers.secrets import REDACTED, SECRET_HEADERS, redact_path


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
