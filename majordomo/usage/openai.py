# -*- test-case-name: tests.test_usage_parsers -*-
"""
Usage of OpenAI and Azure OpenAI responses (USAGE-SPEC.md section 2): Chat
Completions, legacy Completions and Embeddings (C{prompt_tokens} /
C{completion_tokens}), and the Responses API (C{input_tokens} /
C{output_tokens}), streamed or not.

Chat streams carry usage only when the request asks for it; when the gateway
asked on a client's behalf (L{majordomo.providers.openai_usage}), this module
hides the extra usage chunk from that client (L{UsageChunkFilter}).

A background Response (C{"background": true}) is answered before the model
has run: C{"status": "queued"} or C{"in_progress"} and C{"usage": null}.  The
provider bills it when it finishes, whether or not anyone is still reading,
so such an answer is L{PENDING_BACKGROUND}, not C{unparseable}: read fine,
its counts not known yet.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from majordomo.usage import (
    COMPLETE,
    MISSING_NOT_REQUESTED,
    MISSING_STREAM_TRUNCATED,
    PENDING_BACKGROUND,
    UNPARSEABLE,
    Usage,
    counts_checked,
    has_count,
    text_or_none,
    tokens,
)
from majordomo.usage.parsing import StreamedJSONParser, usage_from_document
from majordomo.usage.sse import SSEParser

_USAGE_ENDPOINTS = ("/chat/completions", "/completions", "/embeddings", "/responses")

# A non-null usage object: the one thing in a chat chunk the gateway needs.
# Also found in raw event text, where a data field split over several lines
# puts "data:" prefixes between the JSON tokens.
_USAGE_PATTERN = r'"usage"(?:\s|data:)*:(?:\s|data:)*\{'
_USAGE_OBJECT = re.compile(_USAGE_PATTERN)
_USAGE_OBJECT_BYTES = re.compile(_USAGE_PATTERN.encode())
# Responses API stream events that carry the final Response object.
_TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Response statuses of a response the model has not finished: no usage yet.
_UNFINISHED_STATUSES = frozenset({"queued", "in_progress"})

# usage_status of a background Response answered before it finished (queued
# or in progress, usage null), or a background stream that ended before its
# terminal event: the provider bills the whole response once it finishes, but
# this answer cannot say what; counts and cost are unknown (NULL, never 0).


def has_usage(route: str) -> bool:
    """Whether a request to C{route} (a path without query) is billed by tokens."""
    return route.rstrip("/").endswith(_USAGE_ENDPOINTS)


@counts_checked
def usage_from_usage(usage: Any) -> Usage | None:
    """
    Normalise an OpenAI C{usage} object, in either naming scheme; None if it
    reports no token counts.  Reasoning, audio and prediction tokens are
    already inside the completion count: they are slices, never added.
    """
    if has_count(usage, "prompt_tokens"):  # Chat, Completions, Embeddings
        input_key, output_key = "prompt_tokens", "completion_tokens"
        input_details, output_details = "prompt_tokens_details", "completion_tokens_details"
    elif has_count(usage, "input_tokens"):  # Responses
        input_key, output_key = "input_tokens", "output_tokens"
        input_details, output_details = "input_tokens_details", "output_tokens_details"
    else:
        return None
    return Usage(
        COMPLETE,
        input_tokens=tokens(usage, input_key),
        cached_tokens=tokens(usage, input_details, "cached_tokens"),
        cache_creation_tokens=tokens(usage, input_details, "cache_write_tokens"),
        cache_creation_5m_tokens=0,
        cache_creation_1h_tokens=0,
        input_audio_tokens=tokens(usage, input_details, "audio_tokens"),
        tool_use_prompt_tokens=0,
        output_tokens=tokens(usage, output_key),  # absent for embeddings: 0
        reasoning_tokens=tokens(usage, output_details, "reasoning_tokens"),
        output_audio_tokens=tokens(usage, output_details, "audio_tokens"),
        web_search_requests=0,
        raw=usage,
    )


def usage_from_body(body: Any, fallback_model: str | None) -> Usage:
    """
    The usage of a non-streamed response body; L{PENDING_BACKGROUND} for a
    Response not finished yet, which carries no usage (the model it names is kept).
    """
    usage = usage_from_document(
        body, fallback_model, "model", "usage", usage_from_usage, service_tier_key="service_tier"
    )
    if usage.usage_status == UNPARSEABLE and is_unfinished_response(body):
        tier = text_or_none(body.get("service_tier"))
        return Usage(PENDING_BACKGROUND, model=usage.model, service_tier=tier)
    return usage


def is_unfinished_response(body: Any) -> bool:
    """
    Whether C{body} is a Responses API object the model has not finished
    (queued or in progress), so it reports no usage yet.
    """
    if not isinstance(body, dict):
        return False
    status = body.get("status")
    return isinstance(status, str) and status in _UNFINISHED_STATUSES and body.get("usage") is None


class OpenAIStreamParser(StreamedJSONParser):
    """
    Usage of a streamed response.  Chat and Completions chunks carry it in the
    chunk whose C{usage} is not null (the last such wins; Azure's first chunk
    also has no choices but is not it); Responses streams carry it in the
    terminal event's Response object.  A background Responses stream that
    ends before that event is L{PENDING_BACKGROUND}: the response runs on
    without its reader and is billed when it finishes.
    """

    def __init__(self, fallback_model: str | None, *, usage_requested: bool = True) -> None:
        super().__init__(fallback_model)
        self._usage_requested = usage_requested
        self._usage: Usage | None = None
        self._service_tier: str | None = None
        self._background = False
        self._finished = False  # a terminal Responses event came

    def can_skip(self, text: str) -> bool:
        # Once the model is known, a chat chunk without a usage object teaches
        # nothing, nor does a Responses event other than the terminal ones.
        # (Inside a JSON string a quote is escaped, so content cannot fake the
        # usage pattern; content naming a terminal event only costs a decode.)
        return (
            self.model is not None
            and _USAGE_OBJECT.search(text) is None
            and not any(name in text for name in _TERMINAL_EVENTS)
        )

    def on_object(self, event: str | None, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if isinstance(kind, str) and kind.startswith("response."):
            self._on_responses_event(kind, obj.get("response"))
            return
        self.note_model(obj.get("model"))
        self._service_tier = text_or_none(obj.get("service_tier")) or self._service_tier
        usage = usage_from_usage(obj.get("usage"))
        if usage is not None:
            self._usage = usage

    def _on_responses_event(self, kind: str, response: Any) -> None:
        if not isinstance(response, dict):
            return
        self.note_model(response.get("model"))
        self._background = self._background or response.get("background") is True
        if kind in _TERMINAL_EVENTS:
            self._finished = True
            # Earlier events echo the requested tier ("auto"), not the served one.
            self._service_tier = text_or_none(response.get("service_tier"))
            usage = usage_from_usage(response.get("usage"))
            if usage is not None:
                self._usage = usage

    def result(self, complete: bool) -> Usage:
        model = self.model or self.fallback_model
        if self._usage is not None:
            # The usage chunk covers the whole request, even if the stream broke after it.
            return replace(self._usage, model=model, service_tier=self._service_tier)
        if self.unreadable(complete):
            return self.unknown(UNPARSEABLE)
        if self._background and not self._finished:
            return self.unknown(PENDING_BACKGROUND)
        if not self._usage_requested:
            return self.unknown(MISSING_NOT_REQUESTED)
        return self.unknown(MISSING_STREAM_TRUNCATED)


def is_usage_chunk(data: str) -> bool:
    """Whether an SSE data field is the usage-only chunk that include_usage adds."""
    if _USAGE_OBJECT.search(data) is None:  # most chunks: "usage":null or none at all
        return False
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(chunk, dict)
        and isinstance(chunk.get("usage"), dict)
        and chunk.get("choices") == []
    )


class UsageChunkFilter:
    """
    Removes the usage-only chunk from a Chat Completions stream whose client
    did not ask for it (the gateway did), since naive clients index
    C{choices[0]}.  Every other byte passes through unchanged, and an event is
    passed on as soon as it is complete: only an unfinished event is held.
    """

    def __init__(self) -> None:
        self._parser = SSEParser()
        self._held = bytearray()
        self._base = 0  # stream offset of _held[0]
        self._removed = False
        # Offset just past a removed event that ended in a CR at a chunk end:
        # a LF there belongs to that event's CRLF.
        self._lf_at: int | None = None

    def filter(self, data: bytes) -> bytes:
        """Take the next chunk of the stream; return what may go to the client now."""
        if self._parser.broken:
            return data
        if not self._held and self._lf_at is None:
            if self._removed:
                return data  # nothing is left to remove or hold
            if self._parser.skippable(data) and _USAGE_OBJECT_BYTES.search(data) is None:
                self._parser.skip(data)  # whole events, none of them usage-only
                self._base += len(data)
                return data
        self._held += data
        out = bytearray()
        for event in self._parser.feed(data):
            if not self._removed and is_usage_chunk(event.data):
                self._emit_until(event.start, out)
                ended_in_cr = self._held[event.end - self._base - 1] == 0x0D
                self._drop_until(event.end)
                self._lf_at = event.end if ended_in_cr else None
                self._removed = True
        if self._parser.broken:  # an oversized event: stop filtering
            return bytes(out) + self.flush()
        self._emit_until(self._parser.pending_start, out)
        return bytes(out)

    def flush(self) -> bytes:
        """At the end of the stream: whatever was held back, unchanged."""
        rest = bytes(self._held)
        self._base += len(rest)
        self._held = bytearray()
        return rest

    def _emit_until(self, offset: int, out: bytearray) -> None:
        if self._lf_at is not None and self._lf_at == self._base and self._held:
            if self._held[0] == 0x0A:
                self._drop_until(self._base + 1)
            self._lf_at = None
        count = offset - self._base
        if count > 0:
            out += self._held[:count]
            self._drop_until(offset)

    def _drop_until(self, offset: int) -> None:
        del self._held[: offset - self._base]
        self._base = offset
