# -*- test-case-name: tests.test_streaming -*-
"""
OpenAI's include_usage policy: which requests the gateway may ask for usage.

A streamed OpenAI or Azure OpenAI Chat Completions (or legacy Completions)
response carries usage only when its request sets
C{stream_options.include_usage} (USAGE-SPEC.md section 2.2), so the gateway
sets it on those requests (the splice itself is
L{majordomo.usage.openai.inject_include_usage}; the request side,
L{majordomo.web.rewrite}).  Azure accepts C{stream_options} only from one
api-version on (USAGE-SPEC.md section 2.7).
"""

from __future__ import annotations

from majordomo import providers
from majordomo.providers.query import query_values

# Streams of these providers, on these paths, carry usage only when asked
# (stream_options.include_usage).
USAGE_ON_REQUEST_PROVIDERS = (providers.OPENAI, providers.AZURE)
_USAGE_ON_REQUEST_PATHS = ("/chat/completions", "/completions")
# Azure rejects stream_options before this api-version (USAGE-SPEC.md 2.7).
_AZURE_STREAM_OPTIONS_SINCE = "2024-09-01"


def may_ask_for_usage(provider: str, path: str, query: str) -> bool:
    """Whether the gateway may add stream_options.include_usage to this request."""
    if provider not in USAGE_ON_REQUEST_PROVIDERS:
        return False
    if not path.endswith(_USAGE_ON_REQUEST_PATHS):
        return False
    if provider == providers.AZURE:
        version = (query_values(query, "api-version") or [""])[-1]
        return version[:10] >= _AZURE_STREAM_OPTIONS_SINCE
    return True
