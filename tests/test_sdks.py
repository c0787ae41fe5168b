"""
The official Python SDKs (openai, anthropic, google-genai), configured as the
guide shows, get their answers through the gateway, streamed and not, and each
request produces a correct row.  The provider is a fake on loopback replaying
recorded responses; prices are the bundled table's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from twisted.internet import defer, threads

from tests import support
from tests.gateway_case import GatewayTestCase
from tests.vectors import VECTORS, expected_costs, load_vector


def _vector(name: str) -> dict[str, Any]:
    return load_vector(f"{VECTORS}/{name}.json")


class SDKTests(GatewayTestCase):
    """One test per SDK and mode."""

    def answer_with(self, vector: dict[str, Any], pieces: int = 1) -> None:
        """The fake provider's next answer: this vector's exact bytes."""
        body = vector["response_body"].encode()
        size = max(1, len(body) // pieces)
        self.upstream.queue.append(
            support.Canned(
                status=vector["response_status"],
                headers={"Content-Type": vector["response_content_type"]},
                chunks=[body[i : i + size] for i in range(0, len(body), size)],
                chunk_delay=0.001 if pieces > 1 else 0.0,
            )
        )

    async def in_thread(self, call: Callable[[], Any], close: Callable[[], Any]) -> Any:
        """Run a blocking SDK call off the reactor thread (the SDKs are synchronous)."""
        self.addCleanup(threads.deferToThread, close)
        return await threads.deferToThread(call)

    def assert_row_matches(self, row: dict[str, Any], vector: dict[str, Any]) -> None:
        expected = vector["expected"]
        self.assertEqual(row["usage_status"], "complete")
        self.assertEqual(row["model"], expected["model"])
        self.assertEqual(
            (row["input_tokens"], row["output_tokens"]),
            (expected["input_tokens"], expected["output_tokens"]),
        )
        self.assertEqual(Decimal(str(row["total_cost"])), expected_costs(vector)[2])

    def test_openai_stream(self) -> defer.Deferred[None]:
        """
        openai SDK, stream=True without stream_options: every content chunk
        arrives, the usage chunk the gateway asked for does not, and the row
        has the full usage and cost.
        """
        from openai import OpenAI

        vector = _vector("03_openai_chat_stream_include_usage")
        self.answer_with(vector, pieces=4)

        async def go() -> None:
            client = OpenAI(
                base_url=self.url + "/v1",
                api_key="your-openai-api-key",
                default_headers={"X-Majordomo-Key": self.key},
                max_retries=0,
            )

            def call() -> list[Any]:
                stream = client.chat.completions.create(
                    model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True
                )
                return list(stream)

            chunks = await self.in_thread(call, client.close)
            self.assertTrue(chunks)
            self.assertTrue(all(chunk.usage is None for chunk in chunks))
            self.assertTrue(all(chunk.choices for chunk in chunks))
            (row,) = await self.rows()
            self.assert_row_matches(row, vector)

        return support.as_deferred(go())

    def test_anthropic(self) -> defer.Deferred[None]:
        """The guide's Anthropic snippet (extra_headers for the key) gets its message."""
        import anthropic

        vector = _vector("17_anthropic_nonstream_basic")
        self.answer_with(vector)

        async def go() -> None:
            client = anthropic.Anthropic(
                base_url=self.url, api_key="your-anthropic-api-key", max_retries=0
            )
            message = await self.in_thread(
                lambda: client.messages.create(
                    model="claude-sonnet-4-20250514",
                    max_tokens=1024,
                    messages=[{"role": "user", "content": "Hello!"}],
                    extra_headers={"X-Majordomo-Key": self.key},
                ),
                client.close,
            )
            self.assertEqual(message.usage.output_tokens, vector["expected"]["output_tokens"])
            (row,) = await self.rows()
            self.assert_row_matches(row, vector)
            self.assertEqual(row["model_requested"], "claude-sonnet-4-20250514")
            sent = self.upstream.received[0]
            self.assertEqual(sent["headers"]["authorization"], ["Bearer your-anthropic-api-key"])
            self.assertEqual(sent["uri"], "/v1/messages")

        return support.as_deferred(go())

    def test_anthropic_stream(self) -> defer.Deferred[None]:
        """anthropic SDK messages.stream(): the final message and the row agree on usage."""
        import anthropic

        vector = _vector("20_anthropic_stream_cache_5m_1h_and_read")
        self.answer_with(vector, pieces=6)

        async def go() -> None:
            client = anthropic.Anthropic(
                base_url=self.url, api_key="your-anthropic-api-key", max_retries=0
            )

            def call() -> Any:
                with client.messages.stream(
                    model="claude-opus-4-5",
                    max_tokens=1024,
                    messages=[{"role": "user", "content": "Hello!"}],
                    extra_headers={"X-Majordomo-Key": self.key},
                ) as stream:
                    return stream.get_final_message()

            message = await self.in_thread(call, client.close)
            (row,) = await self.rows()
            self.assert_row_matches(row, vector)
            self.assertEqual(message.usage.output_tokens, row["output_tokens"])
            self.assertEqual(
                row["cache_creation_1h_tokens"], vector["expected"]["cache_creation_1h_tokens"]
            )
            self.assertTrue(row["stream"])

        return support.as_deferred(go())

    def _gemini_client(self) -> Any:
        from google import genai
        from google.genai import types

        return genai.Client(
            api_key="AIza-your-gemini-key",
            http_options=types.HttpOptions(
                base_url=self.url, headers={"X-Majordomo-Key": self.key}
            ),
        )

    def test_gemini(self) -> defer.Deferred[None]:
        """
        google-genai generate_content: thoughts are billed as output, the API
        key (sent as x-goog-api-key) is stored only as a hash.
        """
        vector = _vector("25_gemini_generate_nonstream_thoughts")
        self.answer_with(vector)

        async def go() -> None:
            client = self._gemini_client()
            response = await self.in_thread(
                lambda: client.models.generate_content(model="gemini-2.5-flash", contents="Hello"),
                client.close,
            )
            self.assertEqual(
                response.usage_metadata.thoughts_token_count,
                vector["expected"]["reasoning_tokens"],
            )
            (row,) = await self.rows()
            self.assert_row_matches(row, vector)
            self.assertTrue(row["path"].endswith("/models/gemini-2.5-flash:generateContent"))
            self.assertEqual(row["reasoning_tokens"], vector["expected"]["reasoning_tokens"])
            self.assertNotIn("AIza-your-gemini-key", json.dumps(row))
            self.assertIsNotNone(row["provider_api_key_hash"])

        return support.as_deferred(go())

    def test_gemini_stream(self) -> defer.Deferred[None]:
        """google-genai generate_content_stream (SSE, CRLF): running totals, last one wins."""
        vector = _vector("26_gemini_stream_sse_thoughts")
        self.answer_with(vector, pieces=5)

        async def go() -> None:
            client = self._gemini_client()
            chunks = await self.in_thread(
                lambda: list(
                    client.models.generate_content_stream(model="gemini-2.5-pro", contents="Hi")
                ),
                client.close,
            )
            self.assertGreater(len(chunks), 1)
            (row,) = await self.rows()
            self.assert_row_matches(row, vector)
            self.assertTrue(self.upstream.received[0]["uri"].endswith("?alt=sse"))

        return support.as_deferred(go())
