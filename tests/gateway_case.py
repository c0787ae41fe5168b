"""A TestCase that runs a real gateway against a fake provider, both on loopback."""

from __future__ import annotations

import json
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

from majordomo.db.keys import KeyStore
from majordomo.service import GatewayService
from tests import support


class GatewayTestCase(TestCase):
    """Starts a fake provider and a gateway for each test, and stops both after."""

    gateway_env: dict[str, str] = {}

    async def _start(self) -> None:
        support.fresh_database()
        self.upstream = support.FakeProvider(
            support.Canned(chunks=[support.chat_completion("gpt-4o-mini-2024-07-18", 19, 10)])
        )
        self._upstream_slot = support.SwitchableUpstream(support.quiet_site(self.upstream))
        self.upstream_port = reactor.listenTCP(0, self._upstream_slot, interface="127.0.0.1")
        self.addCleanup(self.upstream_port.stopListening)
        config = support.gateway_config(self.upstream_port.getHost().port, **self.gateway_env)
        self.gateway = GatewayService(config, reactor=reactor)
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        await support.wait_for(lambda: self.gateway.port is not None and self.gateway.db.available)
        self.url = f"http://127.0.0.1:{self.gateway.port.getHost().port}"
        # Not kept alive, so no test leaves a connection open behind it.
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        key, self.key = await KeyStore(self.gateway.db).create("Development")
        self.key_id = key.id

    def setUp(self) -> defer.Deferred[None]:
        return support.as_deferred(self._start())

    def use_upstream(self, upstream: Resource | protocol.Factory) -> None:
        """
        Answer the gateway's upstream requests with C{upstream} (a resource,
        or a protocol factory for faults below HTTP) instead of the fake
        provider, on the same port, where the configuration points every
        provider.  Call it before the test's first request: a pooled
        connection stays with what answered it.
        """
        if not isinstance(upstream, protocol.Factory):
            upstream = support.quiet_site(upstream)
        self._upstream_slot.serving = upstream

    async def post(self, path: str, body: Any, **headers: str) -> tuple[Any, bytes]:
        """POST JSON through the gateway; returns (response, body)."""
        all_headers = {"Content-Type": "application/json", **headers}
        response = await self.http.post(
            self.url + path,
            json.dumps(body).encode() if not isinstance(body, bytes) else body,
            headers={k.replace("_", "-"): [v] for k, v in all_headers.items()},
        )
        return response, await treq.content(response)

    async def rows(self, count: int = 1) -> list[dict[str, Any]]:
        """Wait for C{count} rows in llm_requests (the writer batches) and return them."""
        await self.gateway.writer.flush()

        def fetch() -> list[dict[str, Any]]:
            rows = support.run_sql(
                "SELECT row_to_json(r)::text FROM llm_requests r ORDER BY created_at"
            )
            return [json.loads(r[0]) for r in rows] if len(rows) >= count else []

        return await support.wait_for(fetch)
