# -*- test-case-name: tests.test_usage_parsers -*-
"""
Usage of Google Gemini C{generateContent} and C{streamGenerateContent}
responses (USAGE-SPEC.md section 4), Gemini API and Vertex AI alike.

C{promptTokenCount} includes cached tokens but not tool-use prompt tokens, and
C{candidatesTokenCount} excludes thinking, so both sides are summed.  A stream
repeats C{usageMetadata} as running totals on its chunks: the last one wins,
and it is final only on the chunk that has a C{finishReason}.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import unquote

from majordomo.providers.gemini import models_in_path
from majordomo.usage import (
    COMPLETE,
    MISSING_STREAM_TRUNCATED,
    PARTIAL_STREAM_TRUNCATED,
    UNPARSEABLE,
    Usage,
    counts_checked,
    tokens,
)
from majordomo.usage.parsing import StreamedJSONParser, usage_from_document


def has_usage(route: str) -> bool:
    """Whether a request to C{route} (a path without query) is billed by tokens."""
    return route.endswith((":generateContent", ":streamGenerateContent"))


def streams(route: str) -> bool:
    """Whether C{route} asks for a streamed answer."""
    return route.endswith(":streamGenerateContent")


def model_from_path(route: str) -> str | None:
    """The model named in the URL, where Gemini requests carry it."""
    called = next((m for m in models_in_path(route) if m.method is not None), None)
    return unquote(called.model) if called else None


def _modality_tokens(details: Any, modality: str) -> int:
    """The tokens of one modality in a C{*TokensDetails} list."""
    if not isinstance(details, list):
        return 0
    return sum(
        tokens(entry, "tokenCount")
        for entry in details
        if isinstance(entry, dict) and entry.get("modality") == modality
    )


@counts_checked
def usage_from_metadata(metadata: Any) -> Usage | None:
    """Normalise a C{usageMetadata} object; None if there is none."""
    if not isinstance(metadata, dict):
        return None
    prompt = tokens(metadata, "promptTokenCount")
    tool_use = tokens(metadata, "toolUsePromptTokenCount")
    thoughts = tokens(metadata, "thoughtsTokenCount")
    # Audio is priced apart only when read fresh: cached audio is a cache read.
    audio_in = _modality_tokens(metadata.get("promptTokensDetails"), "AUDIO")
    audio_in -= _modality_tokens(metadata.get("cacheTokensDetails"), "AUDIO")
    return Usage(
        COMPLETE,
        input_tokens=prompt + tool_use,
        cached_tokens=tokens(metadata, "cachedContentTokenCount"),
        cache_creation_tokens=0,
        cache_creation_5m_tokens=0,
        cache_creation_1h_tokens=0,
        input_audio_tokens=max(0, audio_in),
        tool_use_prompt_tokens=tool_use,
        output_tokens=tokens(metadata, "candidatesTokenCount") + thoughts,
        reasoning_tokens=thoughts,
        output_audio_tokens=_modality_tokens(metadata.get("candidatesTokensDetails"), "AUDIO"),
        web_search_requests=0,
        raw=metadata,
    )


def usage_from_body(body: Any, fallback_model: str | None) -> Usage:
    """The usage of a non-streamed C{GenerateContentResponse}."""
    return usage_from_document(
        body, fallback_model, "modelVersion", "usageMetadata", usage_from_metadata
    )


def _is_final(chunk: dict[str, Any]) -> bool:
    """Whether C{chunk} ends the answer: a finish reason, or a blocked prompt."""
    feedback = chunk.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        return True
    candidates = chunk.get("candidates")
    return isinstance(candidates, list) and any(
        isinstance(candidate, dict) and candidate.get("finishReason") for candidate in candidates
    )


class GeminiStreamParser(StreamedJSONParser):
    """
    Usage of a streamed answer, from server-sent events (C{alt=sse}) or from
    the streamed JSON array Gemini sends otherwise (C{json_array=True}).
    """

    def __init__(self, fallback_model: str | None, *, json_array: bool = False) -> None:
        super().__init__(fallback_model, json_array=json_array)
        self._metadata: dict[str, Any] | None = None
        self._final = False

    def on_object(self, event: str | None, obj: dict[str, Any]) -> None:
        self.note_model(obj.get("modelVersion"))
        metadata = obj.get("usageMetadata")
        if isinstance(metadata, dict):
            self._metadata = metadata  # running totals: replace, never add
        self._final = self._final or _is_final(obj)

    def result(self, complete: bool) -> Usage:
        usage = usage_from_metadata(self._metadata)
        if usage is None:
            if self.unreadable(complete):
                return self.unknown(UNPARSEABLE)
            return self.unknown(MISSING_STREAM_TRUNCATED)
        usage = replace(usage, model=self.model or self.fallback_model)
        if self._final:
            return usage
        return replace(usage, usage_status=PARTIAL_STREAM_TRUNCATED)  # a lower bound
