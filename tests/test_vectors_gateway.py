"""
Every recorded case in tests/vectors replayed through the running gateway:
a fake provider on loopback answers with the case's exact bytes (streams in
several TCP writes), the case's prices are loaded as overrides, and the stored
row must hold the case's tokens, usage status and exact costs.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from typing import Any

from twisted.internet import defer

from majordomo.pricing import PriceBook
from tests import support
from tests.gateway_case import GatewayTestCase
from tests.vectors import TOKEN_FIELDS, expected_costs, load_vector, vector_files, vector_overrides

# Where each provider's SDK puts the provider key.
PROVIDER_KEY_HEADER = {
    "openai": ("Authorization", "Bearer sk-vector-test"),
    "anthropic": ("x-api-key", "sk-ant-vector-test"),
    "gemini": ("x-goog-api-key", "AIza-vector-test"),
}


def _split(body: bytes, parts: int) -> list[bytes]:
    """C{body} cut into C{parts} pieces at arbitrary (not event) boundaries."""
    size = max(1, len(body) // parts)
    return [body[i : i + size] for i in range(0, len(body), size)]


def _asks_for_usage(vector: dict[str, Any]) -> bool:
    """False for an OpenAI chat stream recorded without include_usage (the gateway adds it)."""
    body = vector["request_body"]
    return not (
        vector["provider"] == "openai"
        and body.get("stream") is True
        and not (body.get("stream_options") or {}).get("include_usage")
        and vector["request_path"].endswith("/chat/completions")
    )


class VectorReplayTests(GatewayTestCase):
    """One test per vector, generated below."""

    async def replay(self, vector: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """Send the vector's request through the gateway; returns (row, body the client got)."""
        body = vector["response_body"].encode("utf-8")
        streamed = vector["response_content_type"].startswith("text/event-stream")
        self.upstream.queue = [
            support.Canned(
                status=vector["response_status"],
                headers={
                    "Content-Type": vector["response_content_type"],
                    **(vector.get("response_headers") or {}),
                },
                chunks=_split(body, 5) if streamed else [body],
                chunk_delay=0.002 if streamed else 0.0,
            )
        ]
        self.gateway.pricing.book = PriceBook.bundled().with_overrides(
            vector_overrides(vector["prices_used"])
        )
        name, value = PROVIDER_KEY_HEADER[vector["provider"]]
        headers = {
            "Content-Type": "application/json",
            "X-Majordomo-Key": self.key,
            name: value,
            **(vector.get("request_headers") or {}),
        }
        response = await self.http.post(
            self.url + vector["request_path"],
            json.dumps(vector["request_body"]).encode(),
            headers={k: [v] for k, v in headers.items()},
        )
        received = await response.content()
        self.assertEqual(response.code, vector["response_status"])
        (row,) = await self.rows()
        return row, received

    async def check(self, path: str) -> None:
        vector = load_vector(path)
        row, received = await self.replay(vector)
        expected = vector["expected"]
        self.assertEqual(received, vector["response_body"].encode("utf-8"))
        self.assertEqual(row["status_code"], vector["response_status"])
        self.assertEqual(row["provider"], vector["provider"])
        self.assertNotIn(PROVIDER_KEY_HEADER[vector["provider"]][1], json.dumps(row))
        (sent,) = self.upstream.received
        if not _asks_for_usage(vector):
            # The gateway asked for usage; this recording has none, so nothing is known.
            self.assertEqual(json.loads(sent["body"])["stream_options"], {"include_usage": True})
            self.assertIsNone(row["input_tokens"])
            self.assertIsNone(row["total_cost"])
            return
        self.assertEqual(json.loads(sent["body"]), vector["request_body"])
        self.assertEqual(row["usage_status"], expected["usage_status"])
        self.assertEqual(row["model"], expected["model"])
        for field in TOKEN_FIELDS:
            if field in expected and field in row:
                self.assertEqual(row[field], expected[field], field)
        stored = tuple(
            None if row[k] is None else Decimal(str(row[k]))
            for k in ("input_cost", "output_cost", "total_cost")
        )
        self.assertEqual(stored, expected_costs(vector))
        # NUMERIC keeps every digit: compare the database's own text too.
        (total_text,) = support.run_sql("SELECT total_cost::text FROM llm_requests")[0]
        if expected_costs(vector)[2] is not None:
            self.assertEqual(Decimal(total_text), expected_costs(vector)[2])


def _add_replay_test(path: str) -> None:
    name = os.path.basename(path)[:-5]

    def test(self: VectorReplayTests) -> defer.Deferred[None]:
        return support.as_deferred(self.check(path))

    test.__doc__ = (
        f"Vector {name} through the gateway: the client gets the provider's exact bytes "
        "and the row holds the expected tokens, usage status and exact costs."
    )
    setattr(VectorReplayTests, f"test_{name}", test)


for _path in vector_files():
    _add_replay_test(_path)
