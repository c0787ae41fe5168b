# -*- test-case-name: tests.test_usage_parsers -*-
"""
L{make_usage_parser}: which usage parser reads one upstream response, from its
provider, path, status and content type.
"""

from __future__ import annotations

from majordomo.providers.query import query_values, split_target
from majordomo.usage import (
    ANTHROPIC,
    AZURE,
    GEMINI,
    NOT_APPLICABLE,
    OPENAI,
    Usage,
    UsageParser,
    anthropic,
    error_usage,
    gemini,
    openai,
)
from majordomo.usage.parsing import CheckedUsageParser, FixedUsageParser, JSONBodyParser


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
