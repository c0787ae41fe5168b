# -*- test-case-name: tests.test_providers -*-
"""
What the gateway knows about each upstream provider: which paths belong to it,
which model a request names, and what its error bodies look like (so a client
SDK can parse the gateway's own errors).  Where its API key travels, and how
secrets are kept out of storage, is L{majordomo.providers.secrets}; the query
string is read by L{majordomo.providers.query}.

The provider is chosen from the path, or from C{X-Majordomo-Provider}, which may
only name a configured provider and never a URL (L{choose_provider}).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from twisted.web.http_headers import Headers

from majordomo.providers import gemini
from majordomo.providers.query import split_target

OPENAI = "openai"
ANTHROPIC = "anthropic"
GEMINI = "gemini"
AZURE = "azure"
PROVIDERS = (OPENAI, ANTHROPIC, GEMINI, AZURE)

# Gemini's methods on a model.  OpenAI's GET /v1/models/{id} has none (a
# fine-tuned id contains colons, but never one of these words after one).
_GEMINI_METHOD = re.compile(
    r"/models/[^/:?]+:(generateContent|streamGenerateContent|countTokens|embedContent"
    r"|batchEmbedContents|predict)(?:\?|$)"
)
_AZURE_DEPLOYMENT = re.compile(r"^/openai/deployments/([^/?]+)")
# The response header in which a provider reports the service tier it served
# a request at, where the body does not say (Gemini's Flex and Priority).
_SERVED_TIER_HEADERS = {GEMINI: b"x-gemini-service-tier"}
# A longer value names no tier the price book knows.
_MAX_TIER_NAME = 64


@dataclass(frozen=True)
class ProviderChoice:
    """
    The provider a request goes to, and why it cannot go there, if it cannot.

    C{provider} is always one of L{PROVIDERS}: the one named in
    C{X-Majordomo-Provider} or, when that names none (or is absent), the
    one of the path; its error format is the one a refusal uses.
    """

    provider: str
    refused: str | None = None  # why the named provider cannot be used


def choose_provider(headers: Headers, path: str) -> ProviderChoice:
    """
    The provider for a request with these headers and this path (the request
    target), the one rule every part of the gateway follows.  An
    C{X-Majordomo-Provider} that names no provider (given twice counts as
    naming none) is refused.
    """
    named = b",".join(headers.getRawHeaders(b"x-majordomo-provider", []))
    chosen = named.decode("latin-1").strip().lower()
    if chosen in PROVIDERS:
        return ProviderChoice(chosen)
    provider = detect_provider(path)
    if not named:
        return ProviderChoice(provider)
    shown = chosen[:64] + ("..." if len(chosen) > 64 else "")
    return ProviderChoice(provider, f"Provider {shown!r} is not configured")


def detect_provider(path: str) -> str:
    """The provider a request path belongs to; OpenAI is the default."""
    if path.startswith("/v1/messages"):
        return ANTHROPIC
    if path.startswith(("/v1beta/", "/v1alpha/")) or _GEMINI_METHOD.search(path):
        return GEMINI
    if path.startswith("/openai/deployments/"):
        return AZURE
    return OPENAI


def served_tier(provider: str, headers: Headers) -> str | None:
    """
    The service tier C{provider} reported in its response C{headers}, if it
    reports one there (Gemini: C{x-gemini-service-tier}; a priority request
    may be served, and billed, at standard).
    """
    name = _SERVED_TIER_HEADERS.get(provider)
    values = headers.getRawHeaders(name) if name else None
    if not values:
        return None
    tier = values[-1].decode("latin-1").strip()
    return tier if 0 < len(tier) <= _MAX_TIER_NAME else None


@dataclass(frozen=True)
class RequestFacts:
    """What the gateway reads from a request body and path, once."""

    model: str | None
    stream: bool


def request_facts(provider: str, path: str, body: object) -> RequestFacts:
    """The model a request names and whether it asks for a stream."""
    fields = body if isinstance(body, dict) else {}
    model = fields.get("model") if isinstance(fields.get("model"), str) else None
    stream = fields.get("stream") is True
    if provider == GEMINI:
        route, _ = split_target(path)
        named = next((m for m in gemini.models_in_path(route) if not m.tuned), None)
        if named is not None:
            model = named.model
            stream = named.method == "streamGenerateContent"
    elif provider == AZURE and model is None:
        match = _AZURE_DEPLOYMENT.match(path)
        model = match.group(1) if match else None
    return RequestFacts(model=model, stream=stream)


_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    413: "INVALID_ARGUMENT",
    431: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_ANTHROPIC_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "request_too_large",
    431: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
_OPENAI_TYPE = {status: "invalid_request_error" for status in (400, 401, 408, 413, 431)}


def error_body(provider: str, status: int, message: str, code: str | None = None) -> bytes:
    """A JSON error in the shape the caller's provider SDK expects."""
    body: dict[str, object]
    if provider == ANTHROPIC:
        body = {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPE.get(status, "api_error"), "message": message},
        }
    elif provider == GEMINI:
        body = {
            "error": {
                "code": status,
                "message": message,
                "status": _GEMINI_STATUS.get(status, "INTERNAL"),
            }
        }
    else:
        body = {
            "error": {
                "message": message,
                "type": _OPENAI_TYPE.get(status, "api_error"),
                "param": None,
                "code": code,
            }
        }
    return json.dumps(body).encode("utf-8")
