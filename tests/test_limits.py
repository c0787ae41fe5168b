"""
Bounded request bodies: too large gets 413 before the body is read, too slow
gets 408, and everything within the limits reaches the proxy unchanged.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import defer, protocol, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from majordomo.web.limits import LINGER_BYTES, LINGER_SECONDS, limit_request_bodies
from tests import support
from tests.gateway_case import GatewayTestCase

LIMIT = 1000
TIMEOUT = 0.5


def _head(path: str, key: str, framing: str, *extra: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: gateway",
        "Content-Type: application/json",
        f"X-Majordomo-Key: {key}",
        "Authorization: Bearer sk-test",
        framing,
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _body_of_size(size: int) -> bytes:
    """A chat request of exactly C{size} bytes of JSON."""
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": ""}]}
    padding = size - len(json.dumps(body).encode())
    body["messages"][0]["content"] = "x" * padding
    encoded = json.dumps(body).encode()
    assert len(encoded) == size
    return encoded


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one complete HTTP response."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


class WireClient(protocol.Protocol):
    """A raw TCP client: the test decides what to send and when."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True

    def hang_up(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class WireLimitTests(GatewayTestCase):
    """A real gateway on loopback, with a 1000-byte limit and a 0.5 s body timeout."""

    gateway_env = {
        "MAJORDOMO_SERVER_MAX_BODY_SIZE": str(LIMIT),
        "MAJORDOMO_SERVER_BODY_TIMEOUT": str(TIMEOUT),
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

    def test_declared_length_over_limit_openai(self) -> defer.Deferred[None]:
        """
        A Content-Length over the limit gets 413 in OpenAI's error shape and a
        closed connection, though the client sent only the headers: the gateway
        answered without waiting for (or reading) the body, and forwarded nothing.
        """

        async def go() -> None:
            client = await self.connect()
            client.send(_head("/v1/chat/completions", self.key, "Content-Length: 5000"))
            status, headers, body = await self.closed_response(client)
            self.assertEqual(status, 413)
            self.assertEqual(headers["connection"], "close")
            self.assertEqual(headers["content-type"], "application/json")
            error = json.loads(body)["error"]
            self.assertEqual(set(error), {"message", "type", "param", "code"})
            self.assertIn("1000 bytes", error["message"])
            self.assertEqual(self.upstream.received, [])
            (row,) = await self.rows()  # the request is accounted for, at no cost
            self.assertEqual((row["status_code"], row["usage_status"]), (413, "error_not_billed"))
            self.assertEqual(row["majordomo_api_key_id"], self.key_id)
            self.assertIn("1000 bytes", row["error_message"])

        return support.as_deferred(go())

    def test_declared_length_over_limit_anthropic(self) -> defer.Deferred[None]:
        """On /v1/messages the same 413 comes in Anthropic's error shape."""

        async def go() -> None:
            client = await self.connect()
            client.send(_head("/v1/messages", self.key, "Content-Length: 1001"))
            status, _, body = await self.closed_response(client)
            self.assertEqual(status, 413)
            error = json.loads(body)
            self.assertEqual(error["type"], "error")
            self.assertEqual(error["error"]["type"], "request_too_large")
            self.assertEqual(self.upstream.received, [])

        return support.as_deferred(go())

    def test_provider_header_chooses_error_shape(self) -> defer.Deferred[None]:
        """X-Majordomo-Provider naming a provider picks that provider's error shape."""

        async def go() -> None:
            client = await self.connect()
            client.send(
                _head(
                    "/v1/chat/completions",
                    self.key,
                    "Content-Length: 2000",
                    "X-Majordomo-Provider: gemini",
                )
            )
            status, _, body = await self.closed_response(client)
            self.assertEqual(status, 413)
            self.assertEqual(json.loads(body)["error"]["code"], 413)

        return support.as_deferred(go())

    def test_expect_continue_over_limit(self) -> defer.Deferred[None]:
        """
        A client that asks "Expect: 100-continue" for an oversized body gets
        the 413 alone, never a "100 Continue" inviting it to send the body.
        """

        async def go() -> None:
            client = await self.connect()
            client.send(
                _head("/v1/messages", self.key, "Content-Length: 5000", "Expect: 100-continue")
            )
            status, _, _ = await self.closed_response(client)
            self.assertEqual(status, 413)
            self.assertNotIn(b"100 Continue", client.data)

        return support.as_deferred(go())

    def test_chunked_body_crossing_limit(self) -> defer.Deferred[None]:
        """
        A chunked body gets 413 as soon as it grows past the limit, before the
        client has finished it; the connection is closed and nothing forwarded.
        """

        async def go() -> None:
            client = await self.connect()
            client.send(_head("/v1/chat/completions", self.key, "Transfer-Encoding: chunked"))
            client.send(_chunked(b"x" * 600))
            await task.deferLater(reactor, 0.1, lambda: None)
            self.assertEqual(client.data, b"")  # 600 bytes: still within the limit
            client.send(_chunked(b"x" * 600))  # 1200 bytes; no final chunk is ever sent
            status, headers, body = await self.closed_response(client)
            self.assertEqual(status, 413)
            self.assertEqual(headers["connection"], "close")
            self.assertIn("message", json.loads(body)["error"])
            self.assertEqual(self.upstream.received, [])

        return support.as_deferred(go())

    def test_413_survives_a_client_still_sending(self) -> defer.Deferred[None]:
        """
        A client that sends its whole oversized body (as an SDK uploading a
        file does) before it reads the answer still gets the 413, with no
        error while sending: the gateway reads and drops the rest for a while
        (a lingering close) instead of closing at once, which resets the
        connection under the client's writes (an SDK then reports a
        connection error, never the 413).
        """
        port = self.gateway.port.getHost().port
        size = 8 * 1024 * 1024
        head = _head("/v1/chat/completions", self.key, f"Content-Length: {size}")

        def upload_then_read() -> tuple[str, bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(head)
                try:
                    for _ in range(size // 65536):
                        sock.sendall(b"x" * 65536)
                except OSError as e:
                    return f"sending failed: {e}", b""
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
                return "sent", received

        async def go() -> None:
            for _ in range(3):
                sent, answer = await threads.deferToThread(upload_then_read)
                self.assertEqual(sent, "sent")
                self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer[:100])

        return support.as_deferred(go())

    def test_body_at_limit_is_forwarded(self) -> defer.Deferred[None]:
        """A body of exactly the limit reaches the provider and its 200 comes back."""

        async def go() -> None:
            body = _body_of_size(LIMIT)
            response, _ = await self.post("/v1/chat/completions", body, X_Majordomo_Key=self.key)
            self.assertEqual(response.code, 200)
            self.assertEqual([r["body"] for r in self.upstream.received], [body])

        return support.as_deferred(go())

    def test_chunked_body_at_limit_is_forwarded(self) -> defer.Deferred[None]:
        """A chunked body of exactly the limit is forwarded too (no off-by-one)."""

        async def go() -> None:
            body = _body_of_size(LIMIT)
            client = await self.connect()
            client.send(
                _head(
                    "/v1/chat/completions",
                    self.key,
                    "Transfer-Encoding: chunked",
                    "Connection: close",
                )
            )
            client.send(_chunked(body[:500]) + _chunked(body[500:]) + b"0\r\n\r\n")
            status, _, _ = await self.closed_response(client)
            self.assertEqual(status, 200)
            self.assertEqual([r["body"] for r in self.upstream.received], [body])

        return support.as_deferred(go())

    def test_dribbling_client_gets_408(self) -> defer.Deferred[None]:
        """
        A client sending its body a byte every 100 ms gets 408 once the body
        timeout (0.5 s after the headers) has passed, and the connection closes;
        nothing is forwarded.
        """

        async def go() -> None:
            client = await self.connect()
            client.send(_head("/v1/chat/completions", self.key, "Content-Length: 500"))
            started = reactor.seconds()

            def dribble() -> None:
                if client.data or client.closed:
                    dribbling.stop()
                else:
                    client.send(b"x")

            dribbling = task.LoopingCall(dribble)
            done = dribbling.start(0.1)
            status, headers, body = await self.closed_response(client)
            elapsed = reactor.seconds() - started
            await done
            self.assertEqual(status, 408)
            self.assertEqual(headers["connection"], "close")
            self.assertIn("0.5 seconds", json.loads(body)["error"]["message"])
            self.assertGreaterEqual(elapsed, TIMEOUT - 0.05)
            self.assertLess(elapsed, TIMEOUT + 2)
            self.assertEqual(self.upstream.received, [])
            (row,) = await self.rows()
            self.assertEqual(row["status_code"], 408)

        return support.as_deferred(go())

    def test_idle_keep_alive_not_closed(self) -> defer.Deferred[None]:
        """
        A keep-alive connection that finished a request and then sits idle for
        longer than the body timeout stays open and serves the next request.
        """

        async def go() -> None:
            body = _body_of_size(100)
            client = await self.connect()
            client.send(_head("/v1/chat/completions", self.key, f"Content-Length: {len(body)}"))
            client.send(body)
            # The proxied answer is chunked; its last chunk ends the response.
            await support.wait_for(lambda: client.data.endswith(b"0\r\n\r\n"), timeout=5)
            self.assertEqual(_response(client.data)[0], 200)
            await task.deferLater(reactor, TIMEOUT * 3, lambda: None)
            self.assertFalse(client.closed)
            client.data = b""
            client.send(
                _head(
                    "/v1/chat/completions",
                    self.key,
                    f"Content-Length: {len(body)}",
                    "Connection: close",
                )
                + body
            )
            status, _, _ = await self.closed_response(client)
            self.assertEqual(status, 200)
            self.assertEqual(len(self.upstream.received), 2)

        return support.as_deferred(go())


class Echo(Resource):
    """A leaf resource that records each request's body and answers C{ok}."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render(self, request: Any) -> bytes:
        self.bodies.append(request.content.read())
        return b"ok"


class RequestUnitTests(SynchronousTestCase):
    """L{BoundedRequest} driven over an in-memory transport with a fake clock."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.rejections: list[tuple[Any, ...]] = []
        self.resource = Echo()
        # timeout=None: no idle timer, so the clock holds only the body timer.
        site = Site(self.resource, timeout=None)
        self.factory = limit_request_bodies(
            site, 10, 5.0, self.clock, lambda *args: self.rejections.append(args)
        )
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def test_hook_called_for_413(self) -> None:
        """The on_rejected hook gets the headers, method, raw path, 413 and the message."""
        self.channel.dataReceived(
            b"POST /v1/messages?key=s HTTP/1.1\r\nX-Majordomo-Key: k\r\nContent-Length: 11\r\n\r\n"
        )
        [(headers, method, path, status, message)] = self.rejections
        self.assertEqual(headers.getRawHeaders(b"x-majordomo-key"), [b"k"])
        self.assertEqual((method, path, status), ("POST", "/v1/messages?key=s", 413))
        self.assertIn("10 bytes", message)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.resource.bodies, [])

    def test_hook_called_for_408(self) -> None:
        """
        The body timer fires exactly C{body_timeout} after the headers: 408,
        the hook is told, the connection is closed.
        """
        self.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
        )
        self.channel.dataReceived(b"ab")
        self.clock.advance(4.999)
        self.assertEqual(self.rejections, [])
        self.clock.advance(0.001)
        self.assertEqual([r[1:4] for r in self.rejections], [("POST", "/v1/chat/completions", 408)])
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.resource.bodies, [])

    def test_complete_body_cancels_timer(self) -> None:
        """A body that arrives in time is processed and leaves no timer behind."""
        self.channel.dataReceived(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789")
        self.assertEqual(self.resource.bodies, [b"0123456789"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.rejections, [])

    def test_lost_connection_cancels_timer(self) -> None:
        """A client that hangs up mid-body leaves no timer behind and no rejection."""
        self.channel.dataReceived(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n01")
        self.channel.connectionLost(Exception("gone"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.rejections, [])

    def test_chunked_rest_after_crossing_is_not_processed(self) -> None:
        """
        A chunked body that crosses the limit and ends in the same read gets one
        413 and never reaches the resource.
        """
        self.channel.dataReceived(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + _chunked(b"x" * 8)
            + _chunked(b"y" * 8)
            + b"0\r\n\r\n"
        )
        self.assertEqual([r[3] for r in self.rejections], [413])
        self.assertEqual(self.transport.value().count(b"HTTP/1.1"), 1)
        self.assertEqual(self.resource.bodies, [])

    def test_failing_hook_still_answers(self) -> None:
        """A hook that raises is logged; the client still gets its 413."""

        def broken(*args: Any) -> None:
            raise RuntimeError("recorder down")

        self.factory.on_rejected = broken
        self.channel.dataReceived(b"POST /x HTTP/1.1\r\nContent-Length: 99\r\n\r\n")
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class HalfClosingTransport(StringTransport):
    """A StringTransport that can end its writing side alone, as TCP can."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class LingeringCloseTests(SynchronousTestCase):
    """After a refusal the rest of the request is read and dropped, within bounds."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.resource = Echo()
        site = Site(self.resource, timeout=None)
        limit_request_bodies(site, 10, 5.0, self.clock, None)
        self.channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = HalfClosingTransport()
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\nxxxx"
        )

    def test_answer_then_half_close(self) -> None:
        """The 413 is written, our side ends, and the connection is not closed yet."""
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(self.transport.write_closed)
        self.assertFalse(self.transport.disconnecting)

    def test_rest_dropped_then_closed(self) -> None:
        """What the client still sends is dropped, never parsed; the clock then closes."""
        answer = self.transport.value()
        self.channel.dataReceived(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 65536)
        self.assertEqual((self.transport.value(), self.resource.bodies), (answer, []))
        self.clock.advance(LINGER_SECONDS)
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.aborted)

    def test_too_much_aborted(self) -> None:
        """A client that sends more than LINGER_BYTES after its refusal is cut off."""
        chunk = b"x" * (1024 * 1024)
        for _ in range(LINGER_BYTES // len(chunk) - 1):
            self.channel.dataReceived(chunk)
        self.assertFalse(self.transport.aborted)
        self.channel.dataReceived(chunk * 2)
        self.assertTrue(self.transport.aborted)
