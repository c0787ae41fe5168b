# -*- test-case-name: tests.test_hostile_requests -*-
"""
Where a request goes upstream: the configured base URL's scheme, host and
port, always, with the caller's path appended to the base URL's own path.

twisted.web hands over any request target that has no space in it.
Appended as text to C{http://127.0.0.1:4000}, C{1/v1/chat/completions}
would go to port 40001 and C{.evil.example/...} to another host, so only
origin-form targets (a path starting with C{/}, then an optional query) of
visible ASCII are forwarded; absolute-form (C{http://...}), authority-form
and C{*} targets, bytes the HTTP client refuses, fragments, backslashes and
C{.} or C{..} segments (which would climb out of a base URL's path) are
refused with L{BadTarget}, whose message says why and holds none of the
target.  The method must be an HTTP token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

from twisted.web.client import URI

# What the HTTP client sends as it is (twisted.web._newclient._VALID_URI).
_VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
_SEGMENT_SEPARATORS = re.compile(r"[/\\]")
_DOT_SEGMENTS = frozenset({".", ".."})
_NOT_IN_NETLOC = re.compile(rb"[/?#@\\]")


class BadTarget(ValueError):
    """A request line the gateway does not forward; the message says why."""


@dataclass(frozen=True)
class Origin:
    """A parsed base URL: the origin every request to it goes to, and its path."""

    scheme: bytes
    netloc: bytes
    host: bytes
    port: int
    path: bytes


@lru_cache(maxsize=64)
def origin(base_url: str) -> Origin:
    """
    The origin of a configured C{base_url} (query, fragment and user
    information dropped), as the HTTP client will read it.  Its host part
    holds none of C{/?#@\\}, so any path appended to it (starting with
    C{/}) leaves the origin as it is; checked here, once per base URL.
    """
    parts = urlsplit(base_url)
    netloc = parts.netloc.rpartition("@")[2].encode("ascii")
    scheme = parts.scheme.encode("ascii")
    if _NOT_IN_NETLOC.search(netloc):
        raise BadTarget("The provider's base URL has no usable host")
    read = URI.fromBytes(scheme + b"://" + netloc + b"/")
    return Origin(scheme, netloc, read.host, read.port, parts.path.encode("ascii"))


def check_method(method: bytes) -> None:
    """Refuse a method that is not an HTTP token (the HTTP client would raise)."""
    if not _TOKEN.fullmatch(method):
        raise BadTarget("The request method is not a valid HTTP token")


def upstream_url(base_url: str, target: bytes) -> bytes:
    """
    The URL to forward a request with this target to: C{base_url}'s origin
    and path, then the target.  Raises L{BadTarget} for a target the
    gateway does not forward; any other target leaves the origin as it is
    (see L{origin}).
    """
    check_target(target)
    base = origin(base_url)
    return base.scheme + b"://" + base.netloc + base.path + target


def check_target(target: bytes) -> None:
    """Refuse a request target that is not an origin-form path the gateway forwards."""
    if not target.startswith(b"/"):
        raise BadTarget("The request target must be a path starting with /")
    if not _VISIBLE_ASCII.fullmatch(target):
        raise BadTarget(
            "The request target may hold only visible ASCII characters; percent-encode others"
        )
    if b"#" in target:
        raise BadTarget("The request target may not hold a fragment (#)")
    path = target.partition(b"?")[0].decode("ascii")
    if "\\" in path:
        raise BadTarget("The request path may not hold a backslash")
    if "." not in path and "%" not in path:
        return  # no dot segment, not even an encoded one
    for segment in _SEGMENT_SEPARATORS.split(unquote(path)):
        if segment.partition(";")[0] in _DOT_SEGMENTS:
            raise BadTarget("The request path may not hold . or .. segments")
