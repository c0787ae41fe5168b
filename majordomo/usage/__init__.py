# -*- test-case-name: tests.test_usage_parsers -*-
"""
The provider-neutral usage record (USAGE-SPEC.md section 1), its statuses,
the interface every provider's incremental usage parser implements, and the
checks that keep a reported count from passing for one a bill cannot hold.
The parsers' shared plumbing is L{majordomo.usage.parsing}; the choice of
parser for a response is L{majordomo.usage.choose}.

A token count of C{None} means "unknown" and is stored as NULL, never as 0.
A count the provider reported but that no bill can hold (negative, beyond
PostgreSQL's bigint, not a whole number) is not taken for an absent one: the
whole usage becomes C{invalid_usage}, with every count unknown
(L{counts_checked}, L{checked_usage}), so no cost is computed from it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

# usage_status values (USAGE-SPEC.md section 1, plus "unparseable" for a body
# the parser could not read at all, "invalid_usage" for a usage object whose
# counts cannot be true, and "pending_background" for a background Response
# answered before it finished).
COMPLETE = "complete"
MISSING_NOT_REQUESTED = "missing_not_requested"
MISSING_STREAM_TRUNCATED = "missing_stream_truncated"
PARTIAL_STREAM_TRUNCATED = "partial_stream_truncated"
ERROR_NOT_BILLED = "error_not_billed"
UNPARSEABLE = "unparseable"
NOT_APPLICABLE = "not_applicable"
INVALID_USAGE = "invalid_usage"
PENDING_BACKGROUND = "pending_background"
# The gateway's own status for a request whose billing it cannot know (the
# client or the upstream went away mid-exchange, a row stored reduced).
UNKNOWN = "unknown"

# The largest count a bigint column holds.
BIGINT_MAX = 2**63 - 1


@dataclass
class Usage:
    """
    What one request consumed, normalised across providers.

    C{input_tokens} counts every billed input token (uncached + cache reads +
    cache writes); C{output_tokens} every billed output token (text, reasoning,
    audio).  The other counts are slices of those two.
    """

    usage_status: str
    model: str | None = None
    service_tier: str | None = None
    input_tokens: int | None = None
    cached_tokens: int | None = None
    cache_creation_tokens: int | None = None
    cache_creation_5m_tokens: int | None = None
    cache_creation_1h_tokens: int | None = None
    input_audio_tokens: int | None = None
    tool_use_prompt_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    output_audio_tokens: int | None = None
    web_search_requests: int | None = None
    raw: dict[str, Any] | None = field(default=None, repr=False)
    # Set once a reported count was found invalid, so that a later change of
    # status (a cut stream) cannot hide it; see checked_usage.
    counts_invalid: bool = field(default=False, repr=False)

    @property
    def uncached_input_tokens(self) -> int | None:
        """Input tokens billed at the plain input price, or None if unknown."""
        if self.input_tokens is None:
            return None
        return self.input_tokens - (self.cached_tokens or 0) - (self.cache_creation_tokens or 0)


class UsageParser(Protocol):
    """
    Reads a response body incrementally, as it streams to the client.

    C{feed} is called with each chunk of the body as it arrives (never
    buffering more than the provider format requires); C{finish} is called once
    when the body ended, with C{complete=False} when the stream was cut
    (client disconnect, upstream reset, timeout).
    """

    def feed(self, data: bytes) -> None: ...

    def finish(self, complete: bool = True) -> Usage: ...


OPENAI = "openai"
AZURE = "azure"
ANTHROPIC = "anthropic"
GEMINI = "gemini"


# The Usage fields that are counts (the token columns of llm_requests).
COUNT_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "reasoning_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "tool_use_prompt_tokens",
    "web_search_requests",
)


class InvalidCount(ValueError):
    """A provider reported a count that cannot be one (see L{tokens})."""


def is_count(value: Any) -> bool:
    """Whether C{value} is a count a bill can hold: a whole number in 0..BIGINT_MAX."""
    return type(value) is int and 0 <= value <= BIGINT_MAX


def tokens(mapping: Any, *path: str) -> int:
    """
    The token count at C{path} inside a provider's usage JSON.  Absent or
    null counts are 0: providers omit the detail fields they have nothing to
    report in.  A count that is reported but is not a whole number in
    0..BIGINT_MAX (negative, beyond bigint, a float, a string, a boolean), or
    a path through something that is not an object, raises L{InvalidCount}:
    it must not pass for an absent count.  Readers of a usage object catch it
    with L{counts_checked}.
    """
    value = mapping
    for key in path:
        if value is None:
            return 0
        if not isinstance(value, dict):
            raise InvalidCount(f"{key!r} is inside a {type(value).__name__}, not an object")
        value = value.get(key)
    if value is None:
        return 0
    if not is_count(value):
        raise InvalidCount(f"{path[-1]!r} is not a count")
    return int(value)


def has_count(mapping: Any, key: str) -> bool:
    """
    Whether C{mapping} is a dict that reports C{key} (with any value but
    null: whether the value is a valid count is for L{tokens} to judge).
    """
    return isinstance(mapping, dict) and mapping.get(key) is not None


def counts_checked(read: Callable[[Any], Usage | None]) -> Callable[[Any], Usage | None]:
    """
    Decorates a function that normalises a provider's usage object with
    L{tokens}: a count found invalid makes the usage C{invalid_usage}, every
    count unknown, the raw object kept for a human to look at.
    """

    @functools.wraps(read)
    def checked(raw: Any) -> Usage | None:
        try:
            return read(raw)
        except InvalidCount:
            return Usage(
                INVALID_USAGE, raw=raw if isinstance(raw, dict) else None, counts_invalid=True
            )

    return checked


def checked_usage(usage: Usage) -> Usage:
    """
    C{usage} if every count is unknown or a valid count; otherwise (a count
    found invalid, or a normalised sum beyond bigint) the same usage with
    status C{invalid_usage} and every count unknown.
    """
    if not usage.counts_invalid and all(
        getattr(usage, name) is None or is_count(getattr(usage, name)) for name in COUNT_FIELDS
    ):
        return usage
    unknown: dict[str, Any] = dict.fromkeys(COUNT_FIELDS)
    return replace(usage, usage_status=INVALID_USAGE, counts_invalid=True, **unknown)


def text_or_none(value: Any) -> str | None:
    """C{value} if it is a non-empty string (a model name, a service tier)."""
    return value if isinstance(value, str) and value else None


def error_usage(model: str | None) -> Usage:
    """An upstream error answer: nothing was billed, so every count is 0."""
    return Usage(
        ERROR_NOT_BILLED,
        model=model,
        input_tokens=0,
        cached_tokens=0,
        cache_creation_tokens=0,
        cache_creation_5m_tokens=0,
        cache_creation_1h_tokens=0,
        input_audio_tokens=0,
        tool_use_prompt_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
        output_audio_tokens=0,
        web_search_requests=0,
    )
