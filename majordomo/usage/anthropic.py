# -*- test-case-name: tests.test_usage_parsers -*-
"""
Usage of Anthropic Messages responses (USAGE-SPEC.md section 3), streamed or
not.

Anthropic's C{input_tokens} excludes cache reads and writes, so the normalised
input adds them back.  A stream reports usage twice: C{message_start} has the
input side and a placeholder output count, C{message_delta} has cumulative
totals that may revise the input upward (server tools).  They are merged field
by field, the last non-null value winning, as the official SDK does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from majordomo.usage import (
    COMPLETE,
    MISSING_STREAM_TRUNCATED,
    PARTIAL_STREAM_TRUNCATED,
    UNPARSEABLE,
    Usage,
    counts_checked,
    has_count,
    text_or_none,
    tokens,
)
from majordomo.usage.parsing import StreamedJSONParser, usage_from_document


def has_usage(route: str) -> bool:
    """Whether a request to C{route} (a path without query) is billed by tokens."""
    return route.rstrip("/").endswith("/messages")


@counts_checked
def usage_from_usage(usage: Any) -> Usage | None:
    """Normalise an Anthropic C{usage} object; None if it reports no input count."""
    if not has_count(usage, "input_tokens"):
        return None
    uncached = tokens(usage, "input_tokens")
    written = tokens(usage, "cache_creation_input_tokens")
    read = tokens(usage, "cache_read_input_tokens")
    written_5m = tokens(usage, "cache_creation", "ephemeral_5m_input_tokens")
    written_1h = tokens(usage, "cache_creation", "ephemeral_1h_input_tokens")
    # Writes the TTL split does not account for (or no split at all) were
    # made with the default TTL, 5 minutes.
    written_5m += max(0, written - written_5m - written_1h)
    return Usage(
        COMPLETE,
        service_tier=text_or_none(usage.get("service_tier")),
        input_tokens=uncached + written + read,
        cached_tokens=read,
        cache_creation_tokens=written,
        cache_creation_5m_tokens=written_5m,
        cache_creation_1h_tokens=written_1h,
        input_audio_tokens=0,
        tool_use_prompt_tokens=0,
        output_tokens=tokens(usage, "output_tokens"),  # includes thinking
        reasoning_tokens=tokens(usage, "output_tokens_details", "thinking_tokens"),
        output_audio_tokens=0,
        web_search_requests=tokens(usage, "server_tool_use", "web_search_requests"),
        raw=usage,
    )


def usage_from_body(body: Any, fallback_model: str | None) -> Usage:
    """The usage of a non-streamed Message."""
    return usage_from_document(body, fallback_model, "model", "usage", usage_from_usage)


# The stream events whose objects AnthropicStreamParser reads.
_EVENTS_READ = ("message_start", "message_delta", "message_stop", "error")


class AnthropicStreamParser(StreamedJSONParser):
    """
    Usage of a streamed Message.  Without a C{message_delta} (the stream was
    cut, or an C{error} event ended it) only the input side is known.
    """

    def __init__(self, fallback_model: str | None) -> None:
        super().__init__(fallback_model)
        self._usage: dict[str, Any] | None = None
        self._delta_seen = False
        self._stopped = False
        self._failed = False

    def can_skip(self, text: str) -> bool:
        # Only these kinds of event matter; the many content_block_delta
        # events between them do not.  Their names cannot be split or faked
        # by content (the text would have to mention them, which only costs
        # a json.loads).
        return self.model is not None and not any(kind in text for kind in _EVENTS_READ)

    def on_object(self, event: str | None, obj: dict[str, Any]) -> None:
        kind = obj.get("type", event)
        if kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self.note_model(message.get("model"))
                self._merge(message.get("usage"))
        elif kind == "message_delta":
            self._delta_seen = True
            self._merge(obj.get("usage"))
        elif kind == "message_stop":
            self._stopped = True
        elif kind == "error":
            self._failed = True

    def _merge(self, usage: Any) -> None:
        """Last non-null value per field wins; deltas are totals, never summed."""
        if not isinstance(usage, dict):
            return
        merged = self._usage if self._usage is not None else {}
        merged.update((key, value) for key, value in usage.items() if value is not None)
        self._usage = merged

    def result(self, complete: bool) -> Usage:
        usage = usage_from_usage(self._usage)
        if usage is None:
            if self.unreadable(complete):
                return self.unknown(UNPARSEABLE)
            return self.unknown(MISSING_STREAM_TRUNCATED)
        usage = replace(usage, model=self.model or self.fallback_model)
        if self._delta_seen and (self._stopped or (complete and not self._failed)):
            return usage
        if self._delta_seen:  # the totals so far are a lower bound
            return replace(usage, usage_status=PARTIAL_STREAM_TRUNCATED)
        return replace(
            usage,
            usage_status=PARTIAL_STREAM_TRUNCATED,
            output_tokens=None,  # message_start's count is a placeholder
            reasoning_tokens=None,
            output_audio_tokens=None,
        )
