# -*- test-case-name: tests.test_providers -*-
"""
The credentials a request carries, and how the gateway keeps them out of what
it stores: the headers that hold one, the provider key found (only ever kept
as a SHA-256 hash), and paths with secret query values C{REDACTED}.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import unquote_plus

from majordomo.providers.query import query_pairs

# What a stored secret is replaced by, in paths and headers alike.
REDACTED = "REDACTED"

# Headers a provider API key travels in, in the order they are looked at.
PROVIDER_KEY_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")
# Headers that carry a credential: the provider's key, the Majordomo key, cookies.
SECRET_HEADERS = frozenset(
    {*PROVIDER_KEY_HEADERS, "proxy-authorization", "x-majordomo-key", "cookie", "set-cookie"}
)

# Query parameters that carry a provider key; redacted wherever a path is stored.
_SECRET_QUERY_PARAMS = frozenset({"key", "api_key", "api-key"})
# A parameter name, after any character some parser takes to start one: "?"
# (also a stray second one), "&", ";" (older parsers) or "#"; then its "=",
# or the end of the parameter as parse_qsl sees it (a secret name with no
# value still gets one, so every reading of the query finds it redacted).
# A value runs to the next "&" (where parse_qsl ends it) or the end.
_PARAMETER_NAME = re.compile(r"[?&;#]([^=?&;#]*)(?:(=)|(?=&|$))")
_VALUE_END = re.compile(r"&|$")


def sha256_hex(secret: str) -> str:
    """The SHA-256 hex digest of a secret's UTF-8, the only form any key is stored in."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def provider_secret(provider: str, headers: dict[str, str], query: str) -> str | None:
    """
    The provider API key the client sent, wherever that provider carries it
    (header or C{key=} query parameter), or None.  Only ever hashed.
    """
    for name in PROVIDER_KEY_HEADERS:
        value = headers.get(name)
        if value:
            return value.removeprefix("Bearer ").removeprefix("bearer ").strip()
    for name, value in query_pairs(query):
        if name.lower() in _SECRET_QUERY_PARAMS:
            return value
    return None


def hash_secret(secret: str | None) -> str | None:
    """SHA-256 hex of a provider key, so rows can group by key without holding it."""
    if not secret:
        return None
    return sha256_hex(secret)


def redact_path(path: str) -> str:
    """
    C{path} with the values of secret query parameters replaced by
    C{REDACTED}, however the query is split: a name after C{?} (also a
    second one), C{&}, C{;} or C{#}, percent-encoded or not, in any case.
    Every other character is kept as it was.
    """
    if "?" not in path and ";" not in path and "#" not in path:
        return path
    kept: list[str] = []
    done = 0
    for name in _PARAMETER_NAME.finditer(path):
        if name.start() < done or not _is_secret_name(name[1]):
            continue
        if name[2] is None:  # no value
            kept += (path[done : name.end()], "=" + REDACTED)
            done = name.end()
            continue
        end = _VALUE_END.search(path, name.end()).start()  # type: ignore[union-attr]
        kept += (path[done : name.end()], REDACTED)
        done = end
    return "".join(kept) + path[done:] if kept else path


def _is_secret_name(name: str) -> bool:
    return unquote_plus(name).strip().lower() in _SECRET_QUERY_PARAMS
