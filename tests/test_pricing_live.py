"""Live prices: a running gateway fetches pricing.remote_url and prices with it."""

from __future__ import annotations

import json
from decimal import Decimal

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from majordomo.db.keys import KeyStore
from majordomo.service import GatewayService
from tests import support

LLM_PRICES = {
    "updated_at": "2026-11-20",
    "prices": [
        {
            "id": "gpt-4o-mini",
            "vendor": "openai",
            "name": "GPT-4o mini",
            "input": 1.0,
            "output": 2.0,
            "input_cached": None,
        },
    ],
}


class PriceFeed(Resource):
    """llm-prices' current-v1.json, served on loopback."""

    isLeaf = True

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body
        self.fetches = 0

    def render_GET(self, request: object) -> bytes:
        self.fetches += 1
        return self.body


class LivePricingTests(TestCase):
    """The gateway's price book follows the remote table."""

    def test_remote_prices_used(self) -> defer.Deferred[None]:
        """
        With pricing.remote_url set, the gateway fetches it at start and every
        refresh_interval; a request is priced with the fetched price, and a
        malformed fetch keeps it.
        """
        support.fresh_database()
        feed = PriceFeed(json.dumps(LLM_PRICES).encode())
        feed_port = support.listen(feed)
        self.addCleanup(feed_port.stopListening)
        upstream = support.FakeProvider(
            support.Canned(chunks=[support.chat_completion("gpt-4o-mini", 1000, 1000)])
        )
        upstream_port = support.listen(upstream)
        self.addCleanup(upstream_port.stopListening)
        config = support.gateway_config(
            upstream_port.getHost().port,
            MAJORDOMO_PRICING_REMOTE_URL=f"http://127.0.0.1:{feed_port.getHost().port}/current-v1.json",
            MAJORDOMO_PRICING_REFRESH_INTERVAL="0.2",
        )
        gateway = GatewayService(config, reactor=reactor)
        gateway.startService()
        self.addCleanup(gateway.stopService)

        async def go() -> None:
            await support.wait_for(lambda: gateway.pricing.book.remote_version is not None)
            self.assertEqual(gateway.pricing.book.remote_version, "llm-prices 2026-11-20")
            feed.body = b"<html>maintenance</html>"
            fetches = feed.fetches
            await support.wait_for(lambda: feed.fetches >= fetches + 2)
            await support.wait_for(lambda: gateway.db.available)
            _, key = await KeyStore(gateway.db).create("live")
            url = f"http://127.0.0.1:{gateway.port.getHost().port}/v1/chat/completions"
            response = await treq.post(
                url,
                json.dumps({"model": "gpt-4o-mini", "messages": []}).encode(),
                headers={"X-Majordomo-Key": [key], "Content-Type": ["application/json"]},
                persistent=False,
            )
            await response.content()
            await gateway.writer.flush()
            row = support.run_sql("SELECT total_cost, price_source FROM llm_requests")
            # 1000 x $1/M + 1000 x $2/M from the feed (the bundled price is 0.15/0.60).
            self.assertEqual(row, [(Decimal("0.003"), "llm-prices 2026-11-20")])

        return support.as_deferred(go())
