# -*- test-case-name: tests.test_usage_parsers -*-
"""
The provider-neutral usage record (USAGE-SPEC.md section 1), the interface
every provider's incremental usage parser implements, the plumbing those
parsers share, and L{make_usage_parser}, which picks the parser for a response.

A token count of C{None} means "unknown" and is stored as NULL, never as 0.
A count the provider reported but that no bill can hold (negative, beyond
PostgreSQL's bigint, not a whole number) is not taken for an absent one: the
whole usage becomes C{invalid_usage}, with every count unknown
(L{CheckedUsageParser}), so no cost is computed from it.
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from majordomo.providers.query import query_values, split_target
from majordomo.usage.json_members import TopLevelMembers
from majordomo.usage.sse import JSONArrayParser, SSEEvent, SSEParser

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


class CheckedUsageParser:
    """
    Wraps the parser of one response so that C{finish} returns only counts
    PostgreSQL can store and prices can be applied to (L{checked_usage}),
    with C{served_tier} (reported outside the body) as the service tier when
    the body names none.  Anything else asked of it is asked of the wrapped
    parser.
    """

    def __init__(self, parser: UsageParser, served_tier: str | None = None) -> None:
        self.parser = parser
        self.served_tier = served_tier

    def feed(self, data: bytes) -> None:
        self.parser.feed(data)

    def finish(self, complete: bool = True) -> Usage:
        usage = self.parser.finish(complete)
        if usage.service_tier is None and self.served_tier:
            usage = replace(usage, service_tier=self.served_tier)
        return checked_usage(usage)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


def text_or_none(value: Any) -> str | None:
    """C{value} if it is a non-empty string (a model name, a service tier)."""
    return value if isinstance(value, str) and value else None


class FixedUsageParser:
    """A parser whose answer is known before the body arrives; it reads nothing."""

    def __init__(self, usage: Usage) -> None:
        self._usage = usage

    def feed(self, data: bytes) -> None:
        pass

    def finish(self, complete: bool = True) -> Usage:
        return self._usage


def usage_from_document(
    body: Any,
    fallback_model: str | None,
    model_key: str,
    usage_key: str,
    read_usage: Callable[[Any], Usage | None],
    service_tier_key: str | None = None,
) -> Usage:
    """
    The usage of a non-streamed response object: the provider's usage
    member read by C{read_usage}, with the model the body reports.
    """
    if not isinstance(body, dict):
        return Usage(UNPARSEABLE, model=fallback_model)
    model = text_or_none(body.get(model_key)) or fallback_model
    usage = read_usage(body.get(usage_key))
    if usage is None:
        return Usage(UNPARSEABLE, model=model)
    tier = text_or_none(body.get(service_tier_key)) if service_tier_key else usage.service_tier
    return replace(usage, model=model, service_tier=tier)


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


class JSONBodyParser:
    """
    Reads usage from a non-streamed JSON body, as it streams: only the
    object's small top-level members (the usage, the model, the service tier)
    are kept and decoded (L{TopLevelMembers}), so a body of any size costs
    bounded memory and bounded work per chunk.  A body that is not one JSON
    object is C{unparseable}; one cut short is C{missing_stream_truncated}.

    C{read} turns the decoded members into a L{Usage}; C{fallback_model} is
    the model to record when the body names none.
    """

    def __init__(
        self, read: Callable[[Any, str | None], Usage], fallback_model: str | None
    ) -> None:
        self._read = read
        self._fallback = fallback_model
        self._members = TopLevelMembers()

    def feed(self, data: bytes) -> None:
        self._members.feed(data)

    def finish(self, complete: bool = True) -> Usage:
        members = self._members
        if members.broken or not members.closed:
            # A body cut short reads as broken JSON; say why it is unknown.
            status = UNPARSEABLE if complete else MISSING_STREAM_TRUNCATED
            return Usage(status, model=self._fallback)
        return self._read(members.members, self._fallback)


class StreamedJSONParser(ABC):
    """
    Base of the streaming parsers: splits the body into JSON objects, from
    server-sent events or from Gemini's streamed JSON array, and hands each
    object to L{on_object} as soon as it is complete.

    Subclasses keep what they learn from each object and build the L{Usage}
    in L{result}.
    """

    def __init__(self, fallback_model: str | None, *, json_array: bool = False) -> None:
        self.model: str | None = None
        self.fallback_model = fallback_model
        self._array = JSONArrayParser() if json_array else None
        self._sse = None if json_array else SSEParser()
        self._saw_bytes = False
        self._understood = 0

    @abstractmethod
    def on_object(self, event: str | None, obj: dict[str, Any]) -> None:
        """Take in one decoded object; C{event} is its SSE event name, if any."""

    def can_skip(self, text: str) -> bool:
        """
        Whether C{text}, the raw text of whole server-sent events (event names
        included), certainly holds nothing new for this parser, so it need
        not be decoded (most chunks of a long stream).  Asked only once an
        object has been understood.  A false "no" only costs a json.loads; a
        wrong "yes" would lose usage.
        """
        return False

    @abstractmethod
    def result(self, complete: bool) -> Usage:
        """The usage of the whole body; C{complete} is False if it was cut short."""

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._saw_bytes = True
        if self._array is not None:
            for item in self._array.feed(data):
                self._accept(None, item)
        elif self._sse is not None:
            sse = self._sse
            if (
                self._understood
                and sse.skippable(data)
                and self.can_skip(data.decode("utf-8", "replace"))
            ):
                sse.skip(data)
                return
            for event in sse.feed(data):
                self._accept_event(event)

    def finish(self, complete: bool = True) -> Usage:
        return self.result(complete and not self.broken)

    @property
    def broken(self) -> bool:
        """The framing gave up (an oversized event), so the rest went unread."""
        framing = self._array if self._array is not None else self._sse
        return framing is not None and framing.broken

    def unreadable(self, complete: bool) -> bool:
        """
        Whether the body was not the expected stream at all (garbage, an HTML
        page): bytes came, yet not one object could be decoded from them.
        """
        return self._saw_bytes and self._understood == 0 and (complete or self.broken)

    def note_model(self, value: Any) -> None:
        """Remember the first model the response reports."""
        if self.model is None:
            self.model = text_or_none(value)

    def unknown(self, status: str) -> Usage:
        """A usage whose counts are unknown."""
        return Usage(status, model=self.model or self.fallback_model)

    def _accept_event(self, event: SSEEvent) -> None:
        if event.data == "[DONE]" or (self._understood and self.can_skip(_raw_text(event))):
            # ([DONE] is OpenAI's end marker: expected, not garbage.)
            self._understood += 1
            return
        try:
            item = json.loads(event.data)
        except (ValueError, RecursionError):
            return
        self._accept(event.event, item)

    def _accept(self, event: str | None, item: Any) -> None:
        if isinstance(item, dict):
            self._understood += 1
            self.on_object(event, item)


def _raw_text(event: SSEEvent) -> str:
    """An event as the text can_skip reads: its name line, if any, then its data."""
    return event.data if event.event is None else f"event: {event.event}\n{event.data}"


def make_usage_parser(
    provider: str,
    path: str,
    *,
    status_code: int,
    content_type: str,
    request_model: str | None,
    usage_requested: bool = True,
    served_tier: str | None = None,
) -> UsageParser:
    """
    The parser for one upstream response.

    C{provider} is C{"openai"}, C{"azure"}, C{"anthropic"} or C{"gemini"};
    C{path} is the request path with its query string.  C{usage_requested} is
    False for an OpenAI stream whose request did not ask for usage (and the
    gateway did not inject the request for it).  C{served_tier} is the
    service tier a response header reported (Gemini's
    C{x-gemini-service-tier}); it stands where the body names none.
    Endpoints that bill nothing (model lists, token counting) get a parser
    that reads nothing.  Whatever the provider sent, the usage it finishes
    with has storable counts (L{CheckedUsageParser}).
    """
    return CheckedUsageParser(
        _parser_for(provider, path, status_code, content_type, request_model, usage_requested),
        served_tier,
    )


def _parser_for(
    provider: str,
    path: str,
    status_code: int,
    content_type: str,
    request_model: str | None,
    usage_requested: bool,
) -> UsageParser:
    """The provider's own parser for a response (see L{make_usage_parser})."""
    from majordomo.usage import anthropic, gemini, openai

    route, query = split_target(path)
    model = request_model
    if provider == GEMINI:
        model = model or gemini.model_from_path(route)
    known = {
        OPENAI: openai.has_usage,
        AZURE: openai.has_usage,
        ANTHROPIC: anthropic.has_usage,
        GEMINI: gemini.has_usage,
    }.get(provider)
    if known is None:
        raise ValueError(f"unknown provider {provider!r}")
    if not known(route):
        return FixedUsageParser(Usage(NOT_APPLICABLE, model=model))
    if not 200 <= status_code < 300:
        return FixedUsageParser(error_usage(model))

    sse = content_type.split(";")[0].strip().lower() == "text/event-stream"
    if provider == ANTHROPIC:
        if sse:
            return anthropic.AnthropicStreamParser(model)
        return JSONBodyParser(anthropic.usage_from_body, model)
    if provider == GEMINI:
        json_array = not sse and gemini.streams(route) and "sse" not in query_values(query, "alt")
        if sse or json_array:
            return gemini.GeminiStreamParser(model, json_array=json_array)
        return JSONBodyParser(gemini.usage_from_body, model)
    if sse:
        return openai.OpenAIStreamParser(model, usage_requested=usage_requested)
    return JSONBodyParser(openai.usage_from_body, model)
