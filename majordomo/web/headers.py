# -*- test-case-name: tests.test_gateway -*-
"""
Which headers go upstream and back, headers as plain strings for records,
and the headers that must be given at most once.
"""

from __future__ import annotations

from twisted.web.http_headers import Headers

MAJORDOMO_HEADER_PREFIX = b"x-majordomo-"
# Hop-by-hop headers (RFC 9110 7.6.1) and those the HTTP client sets itself.
NOT_FORWARDED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        # The body is relayed as it arrives, possibly changed in length: the
        # upstream client asks the provider for gzip and hands us the decoded
        # bytes (majordomo.web.decoding), and an injected usage chunk is
        # removed.  twisted.web frames it (chunked).
        b"content-length",
        # The upstream client sets its own (gzip, which it decodes) so usage
        # can be read.
        b"accept-encoding",
    }
)


def forwardable(headers: Headers) -> Headers:
    """Request headers for the upstream: no hop-by-hop, no X-Majordomo-*."""
    connection_tokens = {
        token.strip().lower()
        for value in headers.getRawHeaders(b"connection", [])
        for token in value.split(b",")
    }
    out = Headers()
    for name, values in headers.getAllRawHeaders():
        lower = name.lower()
        if (
            lower in NOT_FORWARDED
            or lower in connection_tokens
            or lower.startswith(MAJORDOMO_HEADER_PREFIX)
        ):
            continue
        out.setRawHeaders(name, values)
    return out


def header_list(headers: Headers) -> list[tuple[str, str]]:
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, values in headers.getAllRawHeaders()
        for value in values
    ]


def header_map(headers: Headers) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in headers.getAllRawHeaders()
    }


class RepeatedHeader(ValueError):
    """A header that must be given once was given more than once."""


def single_value(headers: Headers, name: bytes) -> str | None:
    """
    The value of header C{name}, or None when absent.  Two such headers, or
    one holding a comma-separated list, raise L{RepeatedHeader}: which of
    them counts would be a guess (twisted.web keeps all; a proxy in front
    may keep the first).
    """
    values = headers.getRawHeaders(name)
    if not values:
        return None
    if len(values) > 1 or b"," in values[0]:
        raise RepeatedHeader(f"{name.decode('latin-1').title()} may be given only once")
    return values[0].decode("latin-1")
