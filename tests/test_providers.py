"""Routing and secrets: which provider a path belongs to, and what is stored of its key."""

from __future__ import annotations

import hashlib

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from majordomo import providers
from majordomo.providers import secrets


class DetectProviderTests(SynchronousTestCase):
    """The provider is chosen from the path."""

    def test_paths(self) -> None:
        """Each provider's native paths route to it; anything else is OpenAI."""
        cases = {
            "/v1/chat/completions": "openai",
            "/v1/completions": "openai",
            "/v1/embeddings": "openai",
            "/v1/responses": "openai",
            "/v1/models": "openai",
            "/v1/models/gpt-4o": "openai",
            "/v1/models/ft:gpt-4o-mini-2024-07-18:org:name:AbC123": "openai",
            "/v1/messages": "anthropic",
            "/v1/messages?beta=true": "anthropic",
            "/v1beta/models/gemini-2.5-pro:generateContent": "gemini",
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse": "gemini",
            "/v1/models/gemini-2.5-flash:generateContent": "gemini",
            "/v1beta/models": "gemini",
            "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21": "azure",
        }
        for path, provider in cases.items():
            self.assertEqual(providers.detect_provider(path), provider, path)


class SecretTests(SynchronousTestCase):
    """Provider keys are found wherever the provider carries them, and only ever hashed."""

    def test_secret_locations(self) -> None:
        """Authorization, x-api-key, api-key, x-goog-api-key and ?key= are all found."""
        self.assertEqual(
            secrets.provider_secret("openai", {"authorization": "Bearer sk-1"}, ""), "sk-1"
        )
        self.assertEqual(secrets.provider_secret("anthropic", {"x-api-key": "a"}, ""), "a")
        self.assertEqual(secrets.provider_secret("azure", {"api-key": "z"}, ""), "z")
        self.assertEqual(secrets.provider_secret("gemini", {"x-goog-api-key": "g"}, ""), "g")
        self.assertEqual(secrets.provider_secret("gemini", {}, "alt=sse&key=AIzaX"), "AIzaX")
        self.assertIsNone(secrets.provider_secret("openai", {}, ""))
        self.assertEqual(secrets.hash_secret("sk-1"), hashlib.sha256(b"sk-1").hexdigest())

    def test_redact_path(self) -> None:
        """A key in the query string never reaches a stored path; the rest stays."""
        self.assertEqual(
            secrets.redact_path("/v1beta/models/g:generateContent?key=AIzaSECRET&alt=sse"),
            "/v1beta/models/g:generateContent?key=REDACTED&alt=sse",
        )
        self.assertEqual(secrets.redact_path("/v1/chat/completions"), "/v1/chat/completions")

    def test_request_facts(self) -> None:
        """The requested model comes from the body, Gemini's path, or Azure's deployment."""
        facts = providers.request_facts("openai", "/v1/chat/completions", {"model": "gpt-4o"})
        self.assertEqual((facts.model, facts.stream), ("gpt-4o", False))
        facts = providers.request_facts(
            "gemini", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", None
        )
        self.assertEqual((facts.model, facts.stream), ("gemini-2.5-pro", True))
        facts = providers.request_facts(
            "azure", "/openai/deployments/prod-4o/chat/completions?api-version=1", {}
        )
        self.assertEqual(facts.model, "prod-4o")


class ServedTierTests(SynchronousTestCase):
    """The service tier a provider reports in a response header (Gemini's Flex and Priority)."""

    def tier(self, provider: str, *values: bytes) -> str | None:
        headers = Headers()
        if values:
            headers.setRawHeaders(b"x-gemini-service-tier", list(values))
        return providers.served_tier(provider, headers)

    def test_gemini_header(self) -> None:
        self.assertEqual(self.tier(providers.GEMINI, b"priority"), "priority")
        self.assertEqual(self.tier(providers.GEMINI, b" standard "), "standard")
        self.assertEqual(self.tier(providers.GEMINI, b"flex", b"standard"), "standard")
        self.assertIsNone(self.tier(providers.GEMINI))

    def test_other_providers_not_read(self) -> None:
        """OpenAI and Anthropic report their tier in the body; a stray header is ignored."""
        for provider in (providers.OPENAI, providers.AZURE, providers.ANTHROPIC):
            self.assertIsNone(self.tier(provider, b"priority"), provider)

    def test_nonsense_ignored(self) -> None:
        """An empty or overlong value names no tier (the body's, or none, stands)."""
        self.assertIsNone(self.tier(providers.GEMINI, b""))
        self.assertIsNone(self.tier(providers.GEMINI, b"x" * 65))
        self.assertEqual(self.tier(providers.GEMINI, b"pri\xffority"), "pri\xffority")
