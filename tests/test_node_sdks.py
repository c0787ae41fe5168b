"""
The guide's Node.js snippets (npm `openai` and `@anthropic-ai/sdk`), run by
node as separate processes against the gateway.  `make test` installs the
packages into tests/node/node_modules.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from twisted.internet import defer, utils

from tests import support
from tests.gateway_case import GatewayTestCase
from tests.vectors import VECTORS, load_vector

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")


class NodeSnippetTests(GatewayTestCase):
    """Each snippet prints the provider's answer, and its request gets a row."""

    async def run_snippet(self, name: str, **env: str) -> dict[str, Any]:
        node = shutil.which("node")
        self.assertIsNotNone(node, "node is not installed (make test installs the snippets' deps)")
        self.assertTrue(
            os.path.isdir(os.path.join(NODE_DIR, "node_modules")),
            "tests/node/node_modules is missing: run make test (npm install in tests/node)",
        )
        out, err, code = await utils.getProcessOutputAndValue(
            node,
            [os.path.join(NODE_DIR, name)],
            env={
                "PATH": os.environ.get("PATH", ""),
                "GATEWAY_URL": self.url,
                "MAJORDOMO_KEY": self.key,
                **env,
            },
            path=NODE_DIR,
        )
        self.assertEqual(code, 0, err.decode())
        result: dict[str, Any] = json.loads(out)
        return result

    def test_openai_snippet(self) -> defer.Deferred[None]:
        """The OpenAI Node.js snippet gets its completion and a priced row."""

        async def go() -> None:
            response = await self.run_snippet("openai_snippet.mjs", OPENAI_API_KEY="sk-node")
            self.assertEqual(response["choices"][0]["message"]["content"], "Hello!")
            (row,) = await self.rows()
            self.assertEqual((row["model_requested"], row["input_tokens"]), ("gpt-4o", 19))
            self.assertIsNotNone(row["total_cost"])
            sent = self.upstream.received[0]
            self.assertEqual(sent["headers"]["authorization"], ["Bearer sk-node"])

        return support.as_deferred(go())

    def test_anthropic_snippet(self) -> defer.Deferred[None]:
        """The Anthropic Node.js snippet (key in per-request headers) gets its message and row."""
        vector = load_vector(f"{VECTORS}/17_anthropic_nonstream_basic.json")
        self.upstream.queue = [support.Canned(chunks=[vector["response_body"].encode()])]

        async def go() -> None:
            response = await self.run_snippet("anthropic_snippet.mjs", ANTHROPIC_API_KEY="sk-ant")
            self.assertEqual(
                response["usage"]["output_tokens"], vector["expected"]["output_tokens"]
            )
            (row,) = await self.rows()
            self.assertEqual(row["provider"], "anthropic")
            self.assertEqual(row["model_requested"], "claude-sonnet-4-20250514")
            self.assertEqual(row["input_tokens"], vector["expected"]["input_tokens"])
            self.assertIsNotNone(row["total_cost"])

        return support.as_deferred(go())
