"""
Upstream faults: each gets a clear error in the caller's provider format (or
an honestly cut stream), and a row that says what happened.
"""

from __future__ import annotations

import json

from twisted.internet import defer, protocol, reactor
from twisted.web.client import ResponseFailed

from tests import support
from tests.gateway_case import GatewayTestCase
from tests.test_gateway import GUIDE_BODY
from tests.test_streaming import ManualStream, _chunk

TIMEOUTS = {
    "MAJORDOMO_UPSTREAM_RESPONSE_TIMEOUT": "0.5",
    "MAJORDOMO_UPSTREAM_IDLE_TIMEOUT": "0.5",
}


class _Hangup(protocol.Protocol):
    """Reads the request, then resets the connection without a word."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.abortConnection()


class _Silent(protocol.Protocol):
    """Reads the request and never answers."""


class UpstreamFaultTests(GatewayTestCase):
    """What the client and the row see when the provider misbehaves."""

    gateway_env = TIMEOUTS

    def test_reset_before_headers(self) -> defer.Deferred[None]:
        """A provider that resets the connection before answering: 502, and a row saying so."""
        self.use_upstream(protocol.Factory.forProtocol(_Hangup))

        async def go() -> None:
            response, body = await self.post(
                "/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key=self.key
            )
            self.assertEqual(response.code, 502)
            self.assertIn("closed the connection", json.loads(body)["error"]["message"])
            (row,) = await self.rows()
            self.assertEqual(row["status_code"], 502)
            self.assertIn("closed the connection", row["error_message"])
            self.assertIsNone(row["total_cost"])  # it may have been billed: unknown

        return support.as_deferred(go())

    def test_no_answer_in_time(self) -> defer.Deferred[None]:
        """No response headers within upstream.response_timeout: 504 and a row."""
        self.use_upstream(protocol.Factory.forProtocol(_Silent))

        async def go() -> None:
            started = reactor.seconds()
            response, body = await self.post(
                "/v1/messages", {"model": "claude-sonnet-4-20250514"}, X_Majordomo_Key=self.key
            )
            self.assertEqual(response.code, 504)
            self.assertLess(reactor.seconds() - started, 3.0)
            error = json.loads(body)
            self.assertEqual(error["type"], "error")  # Anthropic's shape on an Anthropic path
            (row,) = await self.rows()
            self.assertEqual((row["status_code"], row["provider"]), (504, "anthropic"))
            self.assertIn("did not answer in time", row["error_message"])

        return support.as_deferred(go())

    def test_stream_stalls(self) -> defer.Deferred[None]:
        """
        A stream that goes silent longer than upstream.idle_timeout is cut: the
        client's response ends without its final chunk (an error, not a short
        success), and the row says why.
        """
        upstream = ManualStream()
        self.use_upstream(upstream)

        async def go() -> None:
            request = {**GUIDE_BODY, "stream": True}
            pending = support.as_deferred(
                self.post("/v1/chat/completions", request, X_Majordomo_Key=self.key)
            )
            await upstream.arrived
            upstream.request.write(_chunk(0))
            with self.assertRaises(ResponseFailed):
                await pending
            await upstream.lost  # the gateway dropped the upstream connection
            (row,) = await self.rows()
            self.assertEqual(row["status_code"], 200)
            self.assertIn("upstream.idle_timeout", row["error_message"])
            self.assertEqual(row["usage_status"], "missing_stream_truncated")

        return support.as_deferred(go())

    def test_unreadable_response(self) -> defer.Deferred[None]:
        """A 200 whose body is not what the provider format promises still gets its row."""

        async def go() -> None:
            self.upstream.queue = [
                support.Canned(headers={"Content-Type": "text/html"}, chunks=[b"<html>oops"])
            ]
            response, body = await self.post(
                "/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key=self.key
            )
            self.assertEqual((response.code, body), (200, b"<html>oops"))
            (row,) = await self.rows()
            self.assertEqual(row["usage_status"], "unparseable")
            self.assertIsNone(row["input_tokens"])
            self.assertIsNone(row["total_cost"])

        return support.as_deferred(go())
