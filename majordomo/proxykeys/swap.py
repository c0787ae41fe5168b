# -*- test-case-name: tests.test_proxykeys_gateway -*-
"""
Finding a proxy key in what a request would send upstream, and swapping the
real provider key in, in the same place, so the proxy key never goes upstream.

A client puts its proxy key where its provider SDK puts the provider key
(C{Authorization: Bearer}, C{x-api-key}, C{api-key}, C{x-goog-api-key},
C{?key=}); the gateway looks for it in every forwarded header and the whole
query, so a proxy key anywhere else is found too.  A request carrying two
different proxy keys is refused (which one counts would be a guess), and a
swap that would leave a proxy key in what goes upstream (one percent-encoded
in the query, say, or in the path) is refused rather than forwarded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote

from twisted.web.http_headers import Headers

from majordomo.providers.query import query_pairs, split_target
from majordomo.proxykeys.store import PROXY_KEY_PREFIX

# A proxy key as generate_proxy_key makes it: the prefix, then URL-safe base64.
_PROXY_KEY = re.compile(re.escape(PROXY_KEY_PREFIX) + r"[A-Za-z0-9_-]*")
_PREFIX = PROXY_KEY_PREFIX.encode("ascii")


class ProxyKeyRefused(Exception):
    """The request's proxy key cannot be used; the message says why (never the key)."""


def carried_proxy_keys(forwarded: Headers, query: str) -> set[str]:
    """Every proxy key in the headers to forward and the query (as parse_qsl decodes it)."""
    found: set[str] = set()
    for _, raw_values in forwarded.getAllRawHeaders():
        for raw in raw_values:
            if _PREFIX in raw:
                found.update(_PROXY_KEY.findall(raw.decode("latin-1")))
    if PROXY_KEY_PREFIX in query or "%" in query:
        for name, value in query_pairs(query):
            found.update(_PROXY_KEY.findall(f"{name}={value}"))
    return found


def carried_proxy_key(forwarded: Headers, query: str) -> str | None:
    """The proxy key the request carries, or None; two different ones are refused."""
    found = carried_proxy_keys(forwarded, query)
    if len(found) > 1:
        raise ProxyKeyRefused("A request may carry only one proxy key")
    return found.pop() if found else None


@dataclass(frozen=True)
class Swap:
    """Replaces one proxy key by its real provider key in what goes upstream."""

    proxy_key: str = field(repr=False)
    real_key: str = field(repr=False)

    def headers(self, forwarded: Headers) -> Headers:
        """C{forwarded} (a copy of the client's headers), the real key where the proxy key was."""
        proxy_key = self.proxy_key.encode("latin-1")
        real_key = self.real_key.encode("latin-1")
        for name, values in list(forwarded.getAllRawHeaders()):
            if any(proxy_key in value for value in values):
                forwarded.setRawHeaders(
                    name, [value.replace(proxy_key, real_key) for value in values]
                )
        return forwarded

    def url(self, url: bytes) -> bytes:
        """The upstream URL with the real key, percent-encoded, in the proxy key's place."""
        proxy_key = self.proxy_key.encode("ascii")
        if proxy_key not in url:
            return url
        path, _, query = url.partition(b"?")
        real_key = quote(self.real_key, safe="").encode("ascii")
        return path + b"?" + query.replace(proxy_key, real_key)

    def apply(self, forwarded: Headers, url: bytes) -> tuple[Headers, bytes]:
        """
        The headers and URL to send upstream; refused when a proxy key would
        still be in them.
        """
        headers = self.headers(forwarded)
        url = self.url(url)
        if _PREFIX in url or carried_proxy_keys(headers, split_target(url.decode("latin-1"))[1]):
            raise ProxyKeyRefused("The proxy key must be sent as the provider's key")
        return headers, url
