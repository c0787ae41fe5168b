# -*- test-case-name: tests.test_usage_parsers -*-
"""
The plumbing every provider's usage parser shares: reading a non-streamed
JSON body member by member (L{JSONBodyParser}) or a stream object by object
(L{StreamedJSONParser}), a parser whose answer is known before the body
(L{FixedUsageParser}), and the wrapper that lets only storable counts out
(L{CheckedUsageParser}).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from majordomo.usage import (
    MISSING_STREAM_TRUNCATED,
    UNPARSEABLE,
    Usage,
    UsageParser,
    checked_usage,
    text_or_none,
)
from majordomo.usage.json_members import TopLevelMembers
from majordomo.usage.sse import JSONArrayParser, SSEEvent, SSEParser


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
