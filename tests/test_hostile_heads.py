"""
Hostile request heads and stalled bodies, on a real gateway over raw TCP:
a head that trickles in gets 408 once C{server.head_timeout} has passed (on
a fresh connection and on a kept-alive one), the documented metadata maximum
fits in a head, a larger head gets 431 in the provider's error format, and
every one of many stalled bodies gets its 408 before its connection closes.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from majordomo import metadata
from majordomo.web import limits
from tests import support
from tests.gateway_case import GatewayTestCase
from tests.test_limits import Echo, WireClient, _head, _response

HEAD_TIMEOUT = 0.5
BODY_TIMEOUT = 0.5


def _metadata_maximum() -> list[str]:
    """The documented maximum: as many metadata headers, names and values as allowed."""
    return [
        f"X-Majordomo-{index:02d}{'n' * (metadata.MAX_NAME_LENGTH - 2)}: "
        + "v" * metadata.MAX_VALUE_BYTES
        for index in range(metadata.MAX_HEADERS)
    ]


class WireTestCase(GatewayTestCase):
    """A gateway with short head and body timeouts, and raw TCP clients."""

    gateway_env = {
        "MAJORDOMO_SERVER_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
        "MAJORDOMO_SERVER_BODY_TIMEOUT": str(BODY_TIMEOUT),
    }

    async def connect(self) -> WireClient:
        client = WireClient()
        await protocol.ClientCreator(reactor, lambda: client).connectTCP(
            "127.0.0.1", self.gateway.port.getHost().port
        )
        self.addCleanup(client.hang_up)
        return client

    async def closed_response(self, client: WireClient) -> tuple[int, dict[str, str], bytes]:
        """Wait until the gateway closes the connection; the response it sent."""
        await support.wait_for(lambda: client.closed, timeout=5)
        return _response(client.data)


class HeadTimeoutTests(WireTestCase):
    async def trickle(self, client: WireClient, head: bytes) -> float:
        """Send C{head} a byte every 50 ms until the gateway answers; seconds it took."""
        started = reactor.seconds()
        pending = bytearray(head)

        def send_one() -> None:
            if client.data or client.closed or not pending:
                trickling.stop()
            else:
                client.send(bytes([pending.pop(0)]))

        trickling = task.LoopingCall(send_one)
        done = trickling.start(0.05)
        try:
            await support.wait_for(lambda: client.closed, timeout=5)
        finally:
            if trickling.running:
                trickling.stop()
            await done
        return reactor.seconds() - started

    def test_head_timeout_is_configured(self) -> None:
        """C{server.head_timeout} reaches the site's channels."""
        self.assertEqual(self.gateway.config.server.head_timeout, HEAD_TIMEOUT)
        self.assertIs(self.gateway.site.protocol, limits.BoundedChannel)
        self.assertEqual(self.gateway.site.requestFactory.head_timeout, HEAD_TIMEOUT)

    def test_trickled_head_gets_408(self) -> defer.Deferred[None]:
        """
        A client sending its head a byte every 50 ms is never idle, yet it gets
        408 in its provider's format (Anthropic, from the path) once
        C{server.head_timeout} has passed, and is closed.
        """

        async def go() -> None:
            client = await self.connect()
            client.send(b"POST /v1/messages HTTP/1.1\r\n")
            elapsed = await self.trickle(client, b"X-Padding: " + b"p" * 500)
            status, headers, body = _response(client.data)
            self.assertEqual(status, 408)
            self.assertEqual(headers["connection"], "close")
            self.assertEqual(json.loads(body)["type"], "error")
            self.assertIn("0.5 seconds", json.loads(body)["error"]["message"])
            self.assertGreaterEqual(elapsed, HEAD_TIMEOUT - 0.05)
            self.assertLess(elapsed, HEAD_TIMEOUT + 2)
            self.assertEqual(self.upstream.received, [])

        return support.as_deferred(go())

    def test_trickled_head_with_key_has_row(self) -> defer.Deferred[None]:
        """A head that times out after its key arrived is recorded for that key."""

        async def go() -> None:
            client = await self.connect()
            client.send(_head("/v1/chat/completions", self.key, "X-Trace: 1").rstrip(b"\r\n"))
            status, _, _ = await self.closed_response(client)
            self.assertEqual(status, 408)
            (row,) = await self.rows()
            self.assertEqual((row["status_code"], row["majordomo_api_key_id"]), (408, self.key_id))

        return support.as_deferred(go())

    def test_second_head_on_kept_alive_connection(self) -> defer.Deferred[None]:
        """
        The head timeout applies to every head on a connection: after a first
        request is answered, a connection left idle longer than the timeout is
        kept, but a second head that trickles gets 408.
        """

        async def go() -> None:
            client = await self.connect()
            client.send(_head("/v1/chat/completions", self.key, "Content-Length: 2") + b"{}")
            await support.wait_for(lambda: client.data.endswith(b"0\r\n\r\n"), timeout=5)
            self.assertEqual(_response(client.data)[0], 200)
            await support.sleep(HEAD_TIMEOUT * 3)  # idle, not sending a head: kept
            self.assertFalse(client.closed)
            client.data = b""
            elapsed = await self.trickle(client, _head("/v1/chat/completions", self.key, "A: b"))
            self.assertEqual(_response(client.data)[0], 408)
            self.assertLess(elapsed, HEAD_TIMEOUT + 2)
            self.assertEqual(len(self.upstream.received), 1)

        return support.as_deferred(go())


class HeadSizeTests(WireTestCase):
    def test_documented_metadata_maximum_fits(self) -> defer.Deferred[None]:
        """
        32 metadata headers with 64-character names and 512-byte values, plus
        a few kilobytes of ordinary headers, are forwarded and recorded.
        """

        async def go() -> None:
            client = await self.connect()
            ordinary = [f"X-Ordinary-{i}: " + "o" * 200 for i in range(20)]
            client.send(
                _head(
                    "/v1/chat/completions",
                    self.key,
                    "Content-Length: 2",
                    "Connection: close",
                    *_metadata_maximum(),
                    *ordinary,
                )
                + b"{}"
            )
            status, _, _ = await self.closed_response(client)
            self.assertEqual(status, 200)
            (row,) = await self.rows()
            self.assertEqual(len(row["raw_metadata"]), metadata.MAX_HEADERS)
            self.assertEqual(set(map(len, row["raw_metadata"].values())), {512})

        return support.as_deferred(go())

    async def refused_head(self, path: str, *extra: str) -> tuple[int, dict[str, str], bytes]:
        client = await self.connect()
        client.send(_head(path, self.key, "Content-Length: 2", *extra) + b"{}")
        response = await self.closed_response(client)
        self.assertEqual(self.upstream.received, [])
        return response

    def test_head_over_limit_gets_431(self) -> defer.Deferred[None]:
        """A head larger than the limit gets 431 in OpenAI's error format, with a row."""

        async def go() -> None:
            lines = [f"X-Big-{i}: " + "b" * 1000 for i in range(limits.MAX_HEAD_BYTES // 1000)]
            status, headers, body = await self.refused_head("/v1/chat/completions", *lines)
            self.assertEqual(status, 431)
            self.assertEqual(headers["content-type"], "application/json")
            self.assertIn(str(limits.MAX_HEAD_BYTES), json.loads(body)["error"]["message"])
            (row,) = await self.rows()
            self.assertEqual(row["status_code"], 431)

        return support.as_deferred(go())

    def test_one_huge_header_line_gets_431(self) -> defer.Deferred[None]:
        """A single header line longer than the head limit gets 431 too (Gemini format)."""

        async def go() -> None:
            line = "X-Huge: " + "h" * limits.MAX_HEAD_BYTES
            path = "/v1beta/models/gemini-2.0-flash:generateContent"
            status, _, body = await self.refused_head(path, line)
            self.assertEqual(status, 431)
            self.assertEqual(json.loads(body)["error"]["code"], 431)

        return support.as_deferred(go())

    def test_too_many_header_lines_get_431(self) -> defer.Deferred[None]:
        """More header lines than allowed, each tiny, get 431 (Anthropic format)."""

        async def go() -> None:
            lines = [f"X-L{i}: 1" for i in range(limits.MAX_HEADER_LINES)]
            status, _, body = await self.refused_head("/v1/messages", *lines)
            self.assertEqual(status, 431)
            self.assertEqual(json.loads(body)["type"], "error")
            self.assertIn(str(limits.MAX_HEADER_LINES), json.loads(body)["error"]["message"])

        return support.as_deferred(go())

    def test_malformed_header_gets_provider_400(self) -> defer.Deferred[None]:
        """A header line without a colon gets 400 in the provider's format, not a bare 400."""

        async def go() -> None:
            status, headers, body = await self.refused_head("/v1/messages", "no colon here")
            self.assertEqual(status, 400)
            self.assertEqual(headers["content-type"], "application/json")
            self.assertEqual(json.loads(body)["error"]["type"], "invalid_request_error")

        return support.as_deferred(go())


class StalledBodiesTests(WireTestCase):
    def test_fifty_stalled_bodies_each_get_408(self) -> defer.Deferred[None]:
        """
        Fifty clients send their head and part of their body in one write and
        stall.  Each gets its 408 before the gateway closes it.  The channels'
        idle timeout (twisted.web's 60 s, restarted by every byte) is made
        shorter than the body timeout here, as it is in production with a
        C{server.body_timeout} over 60 s, and equal to it by default (then the
        two timers race): it must never close a body the body timer answers.
        """

        async def go() -> None:
            self.gateway.site.timeOut = BODY_TIMEOUT * 0.6  # each channel's idle timeout
            clients = [await self.connect() for _ in range(50)]
            for client in clients:
                client.send(_head("/v1/chat/completions", self.key, "Content-Length: 500") + b"{")
            await support.wait_for(lambda: all(c.closed for c in clients), timeout=10)
            statuses = [_response(c.data)[0] if c.data else None for c in clients]
            self.assertEqual(statuses, [408] * 50)
            rows = await self.rows(50)
            self.assertEqual({r["status_code"] for r in rows}, {408})

        return support.as_deferred(go())


class HeadTimerUnitTests(SynchronousTestCase):
    """L{limits.BoundedChannel}'s head timer over an in-memory transport and a fake clock."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.rejections: list[tuple[Any, ...]] = []
        self.resource = Echo()
        site = Site(self.resource, timeout=None)  # no idle timer: the clock holds ours only
        limits.limit_request_bodies(
            site, 100, 5.0, self.clock, lambda *a: self.rejections.append(a), head_timeout=2.0
        )
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def test_limits_cover_documented_metadata(self) -> None:
        """The head limits leave room for the documented metadata maximum and much more."""
        metadata_bytes = sum(len(line) for line in _metadata_maximum())
        self.assertGreaterEqual(limits.MAX_HEAD_BYTES, metadata_bytes + 32 * 1024)
        self.assertGreaterEqual(limits.MAX_HEADER_LINES, metadata.MAX_HEADERS + 128)

    def test_silent_connection_has_no_head_timer(self) -> None:
        """A connection that sends nothing is left to the idle timeout: no 408."""
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_head_timer_from_first_byte(self) -> None:
        """The timer starts at the first byte and fires C{head_timeout} later, with a 408."""
        self.channel.dataReceived(b"P")
        self.clock.advance(1.0)
        self.channel.dataReceived(b"OST /v1/messages HTTP/1.1\r\nX-Majordomo-Key: k\r\nA: b\r\n")
        self.clock.advance(0.999)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.001)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(self.transport.disconnecting)
        [(headers, method, path, status, _)] = self.rejections
        self.assertEqual((method, path, status), ("POST", "/v1/messages", 408))
        self.assertEqual(headers.getRawHeaders(b"x-majordomo-key"), [b"k"])

    def test_timer_restarts_for_each_head(self) -> None:
        """A complete head stops the timer; the next head on the connection starts a new one."""
        self.channel.dataReceived(b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(self.resource.bodies, [b"ok"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(60)  # idle between requests: not bounded by the head timer
        self.channel.dataReceived(b"POST /x HTTP/1.1\r\n")
        self.clock.advance(2.0)
        self.assertEqual([r[3] for r in self.rejections], [408])

    def test_refused_once(self) -> None:
        """A head timer firing after the head was refused adds no second answer."""
        self.channel.dataReceived(b"POST /x HTTP/1.1\r\nno colon\r\nA: b\r\n")
        self.clock.advance(10)
        self.assertEqual(self.transport.value().count(b"Connection: close"), 1)
        self.assertEqual([r[3] for r in self.rejections], [400])
