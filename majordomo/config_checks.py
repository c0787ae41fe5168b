# -*- test-case-name: tests.test_config -*-
"""
The checks of single setting values, each returning the problem with a value
(C{None}: none), for L{majordomo.config} to report with the key's name: numbers
in range, URLs the gateway can use as they are, provider base URLs, and the
durations a setting may be written as (C{250ms}, C{30s}, C{5m}, C{1h}).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration_seconds(text: str) -> float | None:
    """C{text} as a number of seconds, if it is a duration (C{1.5}, C{250ms}, C{5m}, C{1h})."""
    match = _DURATION.match(text)
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)] if match else None


def positive(value: float) -> str | None:
    """Sizes, counts and timeouts: above zero."""
    return None if value > 0 else "must be greater than 0"


def port_number(value: int) -> str | None:
    """A TCP port (0: any free one, where a listening port is meant)."""
    return None if 0 <= value <= 65535 else "must be a port number between 0 and 65535"


# What RFC 3986 allows in a host name (and underscores, as in container
# names) and in a path; anything else in a URL is refused rather than guessed at.
_HOST = re.compile(r"[A-Za-z0-9_.-]+")
_PATH = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@/%-]*")


def url(value: str) -> str | None:
    """
    An absolute http(s) URL the gateway can use as it is ("" = not set): an
    ASCII host (a name with non-ASCII letters must be written in its IDNA
    form, which the problem shows), a port in range, no user name or
    password (they would end up in logs), no whitespace.
    """
    if value == "":
        return None
    if not re.match(r"(?i)https?://", value):
        return "must be an http:// or https:// URL"
    if not value.isprintable() or any(c.isspace() for c in value):
        return "must not hold whitespace or control characters"
    bad_host = "must have a host and a port number between 1 and 65535"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:  # a port that is no number or out of range, a bad [address]
        return bad_host
    if "@" in parts.netloc:
        return "must not hold a user name or password (user@host)"
    host = parts.hostname or ""
    if not host.isascii():
        return "must have an ASCII host; write it in its IDNA form" + _idna_hint(host)
    bracketed = parts.netloc.startswith("[")  # an IP address urlsplit has checked
    if not (bracketed or _HOST.fullmatch(host)) or port == 0:
        return bad_host
    if not value.isascii():
        return "must be ASCII (percent-encode the path)"
    return None


def _idna_hint(host: str) -> str:
    """The IDNA form of C{host}, to show in the problem, if it has one."""
    try:
        return f" ({host.encode('idna').decode('ascii')})"
    except UnicodeError:
        return ""


def base_url(value: str) -> str | None:
    """
    A provider base URL: a valid L{url} whose path (if any) becomes the
    prefix of every forwarded path, so it cannot carry a query or fragment.
    """
    problem = url(value)
    if problem or value == "":
        return problem
    if "?" in value or "#" in value:
        return "must not have a query (?...) or fragment (#...)"
    if not _PATH.fullmatch(urlsplit(value).path):
        return "must have a path of URL characters only (percent-encode the rest)"
    return None


def when_unavailable(value: str) -> str | None:
    """What a key's limits do while they cannot be checked: let requests through, or refuse them."""
    return None if value in ("allow", "deny") else "must be allow or deny"


def body_storage(value: str) -> str | None:
    """Where request and response bodies are kept: nowhere, in S3 or in PostgreSQL."""
    return None if value in ("none", "s3", "postgres") else "must be none, s3 or postgres"


_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


def key_list(text: str) -> list[str]:
    """The comma-separated keys of C{text}, spaces around each ignored."""
    return [part.strip() for part in text.split(",") if part.strip()]


def encryption_key(value: str) -> str | None:
    """The key that seals provider keys at rest: 64 hex characters, or "" (proxy keys off)."""
    if value == "" or _HEX_KEY.fullmatch(value):
        return None
    return "must be 64 hexadecimal characters (32 bytes), or empty"


def encryption_keys(value: str) -> str | None:
    """Keys a rotation moves away from: comma-separated, each 64 hex characters."""
    if all(_HEX_KEY.fullmatch(key) for key in key_list(value)):
        return None
    return "must be 64 hexadecimal characters (32 bytes) each, separated by commas"
