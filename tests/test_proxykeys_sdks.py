"""
The official SDKs with a proxy key (issue 15): Python openai, anthropic and
google-genai, and the Node openai SDK, configured as for a provider key but
given the C{mdm_pk_...} key, get their answers through a gateway with proxy
keys enabled; the fake provider sees the real provider key and never the
proxy key; each row carries the proxy key's id and the real key's hash.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from twisted.internet import defer, threads, utils

from tests import support
from tests.test_node_sdks import NODE_DIR
from tests.test_proxykeys_gateway import REAL_KEYS, ProxyKeyGatewayCase, sha256
from tests.vectors import VECTORS, load_vector


def _vector(name: str) -> dict[str, Any]:
    return load_vector(f"{VECTORS}/{name}.json")


class ProxyKeySDKTests(ProxyKeyGatewayCase):
    """One test per SDK: the answer arrives, the real key went upstream, the row says so."""

    def answer_with(self, vector: dict[str, Any]) -> None:
        self.upstream.queue.append(
            support.Canned(
                status=vector["response_status"],
                headers={"Content-Type": vector["response_content_type"]},
                chunks=[vector["response_body"].encode()],
            )
        )

    async def in_thread(self, call: Any, close: Any) -> Any:
        self.addCleanup(threads.deferToThread, close)
        return await threads.deferToThread(call)

    async def assert_swapped(self, provider: str, header: str) -> None:
        """The one upstream request had the real key in C{header}; the row is the proxy key's."""
        (sent,) = self.upstream.received
        self.assertIn(REAL_KEYS[provider], sent["headers"][header][0])
        self.assert_never_upstream(self.proxy_key, "mdm_pk_")
        (row,) = await self.rows()
        self.assertEqual(row["status_code"], 200)
        self.assertEqual(row["usage_status"], "complete")
        self.assertEqual(row["provider"], provider)
        self.assertEqual(row["proxy_key_id"], self.proxy_key_id)
        self.assertEqual(row["provider_api_key_hash"], sha256(REAL_KEYS[provider]))
        self.assertNotIn(self.proxy_key, json.dumps(row))

    def test_openai(self) -> defer.Deferred[None]:
        from openai import OpenAI

        async def go() -> None:
            client = OpenAI(
                base_url=self.url + "/v1",
                api_key=self.proxy_key,
                default_headers={"X-Majordomo-Key": self.key},
                max_retries=0,
            )
            completion = await self.in_thread(
                lambda: client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
                ),
                client.close,
            )
            self.assertEqual(completion.choices[0].message.content, "Hello!")
            await self.assert_swapped("openai", "authorization")

        return support.as_deferred(go())

    def test_anthropic(self) -> defer.Deferred[None]:
        import anthropic

        vector = _vector("17_anthropic_nonstream_basic")
        self.answer_with(vector)

        async def go() -> None:
            client = anthropic.Anthropic(base_url=self.url, api_key=self.proxy_key, max_retries=0)
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
            sent_headers = self.upstream.received[0]["headers"]
            header = "x-api-key" if "x-api-key" in sent_headers else "authorization"
            await self.assert_swapped("anthropic", header)

        return support.as_deferred(go())

    def test_gemini(self) -> defer.Deferred[None]:
        from google import genai
        from google.genai import types

        vector = _vector("25_gemini_generate_nonstream_thoughts")
        self.answer_with(vector)

        async def go() -> None:
            client = genai.Client(
                api_key=self.proxy_key,
                http_options=types.HttpOptions(
                    base_url=self.url, headers={"X-Majordomo-Key": self.key}
                ),
            )
            response = await self.in_thread(
                lambda: client.models.generate_content(model="gemini-2.5-flash", contents="Hello"),
                client.close,
            )
            self.assertEqual(
                response.usage_metadata.thoughts_token_count,
                vector["expected"]["reasoning_tokens"],
            )
            await self.assert_swapped("gemini", "x-goog-api-key")

        return support.as_deferred(go())

    def test_node_openai(self) -> defer.Deferred[None]:
        """The guide's Node.js OpenAI snippet, given the proxy key as OPENAI_API_KEY."""

        async def go() -> None:
            node = shutil.which("node")
            self.assertIsNotNone(node, "node is not installed")
            self.assertTrue(os.path.isdir(os.path.join(NODE_DIR, "node_modules")))
            out, err, code = await utils.getProcessOutputAndValue(
                str(node),
                [os.path.join(NODE_DIR, "openai_snippet.mjs")],
                env={
                    "PATH": os.environ.get("PATH", ""),
                    "GATEWAY_URL": self.url,
                    "MAJORDOMO_KEY": self.key,
                    "OPENAI_API_KEY": self.proxy_key,
                },
                path=NODE_DIR,
            )
            self.assertEqual(code, 0, err.decode())
            self.assertEqual(json.loads(out)["choices"][0]["message"]["content"], "Hello!")
            await self.assert_swapped("openai", "authorization")

        return support.as_deferred(go())
