# -*- test-case-name: tests.test_streaming -*-
"""
OpenAI's include_usage policy: which requests the gateway asks for usage,
and the splice that asks.

A streamed OpenAI or Azure OpenAI Chat Completions (or legacy Completions)
response carries usage only when its request sets
C{stream_options.include_usage} (USAGE-SPEC.md section 2.2), so the gateway
sets it on those requests (L{inject_include_usage}, applied by
L{majordomo.web.rewrite}; the extra usage chunk is hidden from the client by
L{majordomo.usage.openai.UsageChunkFilter}).  Azure accepts C{stream_options} only from one
api-version on (USAGE-SPEC.md section 2.7).
"""

from __future__ import annotations

from majordomo import providers
from majordomo.providers import request_fields
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


def inject_include_usage(
    body: bytes, fields: request_fields.JSONObject | None = None
) -> tuple[bytes, bool]:
    """
    Ask a streamed Chat Completions or legacy Completions request for usage:
    return the body with C{stream_options.include_usage} set, and True.  A
    request that does not stream, already asks, or is not a JSON object is
    returned unchanged with False.

    The body is not re-serialised: the member is spliced into its bytes
    (added first, or set inside an existing C{stream_options}), so every
    other byte reaches the provider as the client sent it.  C{fields} is
    what L{request_fields.read} found in C{body}; read here when None.
    """
    if fields is None:
        fields = request_fields.read_now(body)
    if fields is None or fields.value("stream") is not True:
        return body, False
    if "stream_options" not in fields.members:
        return fields.set_member(body, "stream_options", b'{"include_usage":true}'), True
    located = fields if fields.located else request_fields.read_now(body)
    options = located.members.get("stream_options") if located is not None else None
    if located is None or options is None:
        return body, False
    if options.value is None:  # "stream_options": null
        return located.set_member(body, "stream_options", b'{"include_usage":true}'), True
    if options.members is None or options.members.value("include_usage") is True:
        return body, False  # not an object (the provider says so), or asking already
    return options.members.set_member(body, "include_usage", b"true"), True
