# -*- test-case-name: tests.test_admission,tests.test_streaming -*-
"""
The one change the gateway makes to a request it forwards: a streamed
OpenAI or Azure Chat Completions (or legacy Completions) request, which
carries usage only when asked, is asked for it
(C{stream_options.include_usage}), so its row has exact tokens.  The usage
chunk the client did not ask for is then kept from it (L{majordomo.usage.openai.UsageChunkFilter}).
"""

from __future__ import annotations

from dataclasses import dataclass

from majordomo import providers
from majordomo.providers.query import query_values
from majordomo.usage.openai import inject_include_usage
from majordomo.web.admission import Admitted, Arrival

# Streams of these providers, on these paths, carry usage only when asked
# (stream_options.include_usage).
USAGE_ON_REQUEST_PROVIDERS = (providers.OPENAI, providers.AZURE)
_USAGE_ON_REQUEST_PATHS = ("/chat/completions", "/completions")
# Azure rejects stream_options before this api-version (USAGE-SPEC.md 2.7).
_AZURE_STREAM_OPTIONS_SINCE = "2024-09-01"


@dataclass(frozen=True)
class UsageRewrite:
    """The body to forward, and what the gateway did to it."""

    asked: bool  # the gateway may ask this request for usage
    body: bytes
    strip_usage_chunk: bool  # the client did not ask: its usage chunk is dropped


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


def usage_rewrite(arrival: Arrival, admitted: Admitted) -> UsageRewrite:
    """The admitted request's body, asking for usage where the gateway may."""
    asked = may_ask_for_usage(arrival.provider, arrival.path, arrival.query)
    if not (asked and admitted.fields):
        return UsageRewrite(asked, admitted.body, False)
    body, strip_usage_chunk = inject_include_usage(admitted.body, admitted.fields)
    return UsageRewrite(asked, body, strip_usage_chunk)
