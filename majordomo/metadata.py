# -*- test-case-name: tests.test_metadata -*-
"""
Custom metadata: C{X-Majordomo-<Name>} request headers become the row's
C{raw_metadata}, under the name's canonical spelling (C{X-Majordomo-user-id}
and C{X-MAJORDOMO-USER-ID} are both C{User-Id}), so the guide's
C{raw_metadata->>'User-Id'} finds them whatever case the client sent.

Names a key's owner has activated (C{majordomo metadata activate}) are also
copied into C{indexed_metadata}, which has a GIN index.  The per-key registry
(C{llm_requests_metadata_keys}: request count, last seen, a HyperLogLog sketch
of distinct values) is updated by the log writer's batch statement.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PREFIX = "x-majordomo-"
# Headers that steer the gateway rather than describe the request.
RESERVED = frozenset({"Key", "Provider", "Provider-Alias"})
ALIAS_HEADER = "Provider-Alias"
MAX_HEADERS = 32
MAX_NAME_LENGTH = 64
MAX_VALUE_BYTES = 512
HLL_REGISTERS = 1024  # must match the SQL in majordomo.ledger.statement.INSERT_BATCH
# An HTTP header name is a token (RFC 9110 section 5.6.2, "tchar").
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class MetadataError(ValueError):
    """A metadata header breaks a limit; the message says which and why."""


@dataclass(frozen=True)
class Metadata:
    """What a request's X-Majordomo-* headers say about it."""

    raw: dict[str, str] = field(default_factory=dict)
    provider_alias: str | None = None

    def indexed(self, active: Iterable[str]) -> dict[str, str]:
        """The values of the activated names, for indexed_metadata."""
        return {name: self.raw[name] for name in active if name in self.raw}


def canonical(name: str) -> str:
    """C{user-ID} -> C{User-Id}: each dash-separated word capitalised."""
    return "-".join(word[:1].upper() + word[1:].lower() for word in name.split("-"))


def extract(headers: Iterable[tuple[bytes, Sequence[bytes]]]) -> Metadata:
    """
    Read the metadata from raw request headers (name, values); raises
    L{MetadataError} when a header breaks a limit.  A header sent twice keeps
    its last value.
    """
    raw: dict[str, str] = {}
    alias = None
    for raw_name, values in headers:
        lowered = raw_name.decode("latin-1").lower()
        if not lowered.startswith(PREFIX):
            continue
        suffix = lowered[len(PREFIX) :]
        name = canonical(suffix)
        value = _value(name, values[-1])
        if name == ALIAS_HEADER:
            alias = value
        elif name not in RESERVED:
            raw[metadata_name(suffix)] = value
    if len(raw) > MAX_HEADERS:
        raise MetadataError(f"At most {MAX_HEADERS} X-Majordomo-* metadata headers are allowed")
    return Metadata(raw, alias)


def metadata_name(name: str) -> str:
    """
    The canonical spelling of the metadata name C{name} (what follows
    C{X-Majordomo-}), or L{MetadataError} if no request can carry it: a name
    is 1 to L{MAX_NAME_LENGTH} characters of an HTTP header name (letters,
    digits and C{!#$%&'*+-.^_`|~}), not only dashes, and not one of the
    headers that steer the gateway.  C{extract} and C{metadata activate}
    both apply this rule, so every name that can be activated can be sent.
    """
    shown = f"X-Majordomo-{name[:80]}"
    if not name.strip("-") or len(name) > MAX_NAME_LENGTH:
        raise MetadataError(
            f"Metadata header name {shown!r} must be 1 to {MAX_NAME_LENGTH} characters"
        )
    if not _TOKEN.fullmatch(name):
        raise MetadataError(
            f"Metadata header name {shown!r} may hold only letters, digits and "
            "!#$%&'*+-.^_`|~ (an HTTP header name)"
        )
    result = canonical(name)
    if result in RESERVED:
        raise MetadataError(f"X-Majordomo-{result} steers the gateway; it is never metadata")
    return result


def _value(name: str, value: bytes) -> str:
    if len(value) > MAX_VALUE_BYTES:
        raise MetadataError(
            f"The value of X-Majordomo-{name} is {len(value)} bytes; at most "
            f"{MAX_VALUE_BYTES} are allowed"
        )
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise MetadataError(f"The value of X-Majordomo-{name} is not valid UTF-8") from None
    # As the row will store it (PostgreSQL text holds no NUL): a budget's
    # bucket, read from this value, must be the one its row is counted in.
    return text.replace("\x00", "\ufffd")


def distinct_estimate(registers: list[int] | None) -> int:
    """
    The approximate number of distinct values a HyperLogLog sketch has seen
    (standard estimator, linear counting for small counts; about 3% error).
    """
    if not registers:
        return 0
    m = len(registers)
    alpha = 0.7213 / (1 + 1.079 / m)
    estimate = alpha * m * m / sum(2.0**-r for r in registers)
    zeros = registers.count(0)
    if estimate <= 2.5 * m and zeros:
        estimate = m * math.log(m / zeros)
    return round(estimate)
