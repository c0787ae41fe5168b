"""Which provider gets a request, through the running gateway."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from twisted.internet import defer

from tests import support
from tests.gateway_case import GatewayTestCase
from tests.vectors import VECTORS, expected_costs, load_vector

AZURE_PATH = "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"


class RouteTests(GatewayTestCase):
    """Azure, Gemini's query-string key and X-Majordomo-Provider."""

    def test_azure_deployment(self) -> defer.Deferred[None]:
        """
        An Azure deployment path goes to providers.azure.base_url with path and
        query intact; the api-key header is hashed; the response model is priced.
        """

        async def go() -> None:
            self.upstream.queue = [
                support.Canned(chunks=[support.chat_completion("gpt-4o-2024-11-20", 100, 10)])
            ]
            await self.post(
                AZURE_PATH,
                {"messages": [{"role": "user", "content": "Hi"}]},
                X_Majordomo_Key=self.key,
                api_key="azure-secret",
            )
            (sent,) = self.upstream.received
            self.assertEqual(sent["uri"], AZURE_PATH)
            self.assertEqual(sent["headers"]["api-key"], ["azure-secret"])
            (row,) = await self.rows()
            self.assertEqual(row["provider"], "azure")
            self.assertEqual(row["model_requested"], "prod-4o")
            self.assertEqual(row["model"], "gpt-4o-2024-11-20")
            self.assertEqual(row["input_tokens"], 100)
            self.assertIsNotNone(row["total_cost"])
            self.assertNotIn("azure-secret", json.dumps(row))

        return support.as_deferred(go())

    def test_gemini_key_in_query(self) -> defer.Deferred[None]:
        """
        A Gemini key passed as ?key= reaches the provider, but the stored path
        has it redacted and the row holds only its hash.
        """

        async def go() -> None:
            path = "/v1beta/models/gemini-2.5-flash:generateContent?key=AIzaSECRET"
            await self.post(path, {"contents": []}, X_Majordomo_Key=self.key)
            self.assertEqual(self.upstream.received[0]["uri"], path)
            (row,) = await self.rows()
            self.assertEqual(row["provider"], "gemini")
            self.assertEqual(
                row["path"], "/v1beta/models/gemini-2.5-flash:generateContent?key=REDACTED"
            )
            self.assertNotIn("AIzaSECRET", json.dumps(row))
            import hashlib

            self.assertEqual(
                row["provider_api_key_hash"], hashlib.sha256(b"AIzaSECRET").hexdigest()
            )

        return support.as_deferred(go())

    def test_provider_header_picks_configured_provider(self) -> defer.Deferred[None]:
        """X-Majordomo-Provider routes a path to the named configured provider."""

        async def go() -> None:
            await self.post(
                "/v1/custom/endpoint",
                {"model": "claude-x"},
                X_Majordomo_Key=self.key,
                X_Majordomo_Provider="anthropic",
            )
            (row,) = await self.rows()
            self.assertEqual(row["provider"], "anthropic")
            self.assertEqual(self.upstream.received[0]["uri"], "/v1/custom/endpoint")

        return support.as_deferred(go())

    def test_provider_header_never_names_a_url(self) -> defer.Deferred[None]:
        """An unknown provider name (or a URL) in X-Majordomo-Provider is a 400; nothing is sent."""

        async def go() -> None:
            for value in ("http://evil.example/", "mistral"):
                response, body = await self.post(
                    "/v1/chat/completions",
                    {"model": "gpt-4o"},
                    X_Majordomo_Key=self.key,
                    X_Majordomo_Provider=value,
                )
                self.assertEqual(response.code, 400)
                self.assertIn("not configured", json.loads(body)["error"]["message"])
            self.assertEqual(self.upstream.received, [])

        return support.as_deferred(go())


class UnconfiguredAzureTests(GatewayTestCase):
    """A provider without a base_url is refused, not sent somewhere by default."""

    gateway_env = {"MAJORDOMO_PROVIDERS_AZURE_BASE_URL": ""}

    def test_azure_not_configured(self) -> defer.Deferred[None]:
        """With providers.azure.base_url empty, an Azure path gets a clear 400."""

        async def go() -> None:
            response, body = await self.post(AZURE_PATH, {"messages": []}, X_Majordomo_Key=self.key)
            self.assertEqual(response.code, 400)
            self.assertIn("'azure' is not configured", json.loads(body)["error"]["message"])
            self.assertEqual(self.upstream.received, [])

        return support.as_deferred(go())


def _gemini_json_array_stream() -> tuple[bytes, dict[str, Any]]:
    """Vector 26's events re-framed as Gemini's non-SSE stream: one JSON array, sent bit by bit."""
    vector = load_vector(f"{VECTORS}/26_gemini_stream_sse_thoughts.json")
    events = [
        line[len("data: ") :]
        for line in vector["response_body"].replace("\r\n", "\n").split("\n")
        if line.startswith("data: ")
    ]
    return ("[" + "\n,\r\n".join(events) + "\n]").encode(), vector


class GeminiArrayStreamTests(GatewayTestCase):
    """streamGenerateContent without alt=sse: a streamed JSON array, not SSE."""

    def test_json_array_stream(self) -> defer.Deferred[None]:
        """The array reaches the client unchanged and its last usageMetadata is recorded."""
        body, vector = _gemini_json_array_stream()

        async def go() -> None:
            self.upstream.queue = [
                support.Canned(
                    headers={"Content-Type": "application/json; charset=UTF-8"},
                    chunks=[body[i : i + 97] for i in range(0, len(body), 97)],
                    chunk_delay=0.001,
                )
            ]
            response, received = await self.post(
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
                {"contents": [{"parts": [{"text": "Hi"}]}]},
                X_Majordomo_Key=self.key,
                x_goog_api_key="AIza-x",
            )
            self.assertEqual(received, body)
            (row,) = await self.rows()
            expected = vector["expected"]
            self.assertEqual(row["usage_status"], "complete")
            self.assertTrue(row["stream"])
            self.assertEqual(
                (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"]),
                (expected["input_tokens"], expected["output_tokens"], expected["reasoning_tokens"]),
            )
            self.assertEqual(Decimal(str(row["total_cost"])), expected_costs(vector)[2])

        return support.as_deferred(go())


class AzureStreamTests(GatewayTestCase):
    """Azure streams: usage asked for only where the api-version accepts it."""

    async def stream(self, api_version: str) -> dict[str, Any]:
        vector = load_vector(f"{VECTORS}/04_openai_chat_stream_no_include_usage.json")
        self.upstream.queue = [
            support.Canned(
                headers={"Content-Type": "text/event-stream"},
                chunks=[vector["response_body"].encode()],
            )
        ]
        request = {"stream": True, "messages": [{"role": "user", "content": "Hi"}]}
        await self.post(
            f"/openai/deployments/prod-4o/chat/completions?api-version={api_version}",
            request,
            X_Majordomo_Key=self.key,
            api_key="k",
        )
        sent: dict[str, Any] = json.loads(self.upstream.received[0]["body"])
        return sent

    def test_new_api_version_gets_usage(self) -> defer.Deferred[None]:
        """api-version 2024-10-21 accepts stream_options: the gateway asks for usage."""

        async def go() -> None:
            sent = await self.stream("2024-10-21")
            self.assertEqual(sent["stream_options"], {"include_usage": True})

        return support.as_deferred(go())

    def test_old_api_version_left_alone(self) -> defer.Deferred[None]:
        """
        api-version 2024-02-01 would reject stream_options with a 400: the body
        goes unchanged, and the row says usage was not requested (NULL, not 0).
        """

        async def go() -> None:
            sent = await self.stream("2024-02-01")
            self.assertNotIn("stream_options", sent)
            (row,) = await self.rows()
            self.assertEqual(row["usage_status"], "missing_not_requested")
            self.assertIsNone(row["output_tokens"])
            self.assertIsNone(row["total_cost"])

        return support.as_deferred(go())
