"""
The relay of one upstream body to the client (L{majordomo.web.relay}), on a
real twisted.web request over a L{StringTransport}, with the upstream body's
transport a second L{StringTransport} and time a L{task.Clock}: chunks pass
through in order, a slow client pauses the upstream, a client that leaves
stops it, and the relay says how the body ended.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http, server
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.resource import Resource

from majordomo.usage import NOT_APPLICABLE, Usage
from majordomo.web.relay import BodyRelay, ClientWatch

IDLE_TIMEOUT = 30.0


class _Held(Resource):
    """Keeps the request it renders, unanswered, for the test to answer."""

    isLeaf = True
    request: server.Request

    def render(self, request: server.Request) -> Any:
        self.request = request
        return server.NOT_DONE_YET


class _Parser:
    """A usage parser that keeps what it is fed."""

    def __init__(self) -> None:
        self.fed: list[bytes] = []

    def feed(self, data: bytes) -> None:
        self.fed.append(data)

    def finish(self, complete: bool = True) -> Usage:
        return Usage(usage_status=NOT_APPLICABLE)


class _Shout:
    """A usage-chunk filter stand-in: upper-cases what it passes, adds a tail at the end."""

    def filter(self, data: bytes) -> bytes:
        return data.upper()

    def flush(self) -> bytes:
        return b"TAIL"


class _Client:
    """One client connection to a twisted.web site, with its request held open."""

    def __init__(self) -> None:
        held = _Held()
        site = server.Site(held, timeout=None)
        self.transport = StringTransport()
        self.channel = site.buildProtocol(None)
        assert self.channel is not None
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Length: 0\r\n\r\n"
        )
        self.request = held.request
        self.request.setResponseCode(200)

    def buffer_full(self) -> None:
        """The client's socket buffer fills: its transport pauses the channel."""
        assert self.transport.producer is not None
        self.transport.producer.pauseProducing()

    def buffer_drained(self) -> None:
        """The client read its buffer: its transport resumes the channel."""
        assert self.transport.producer is not None
        self.transport.producer.resumeProducing()

    def leave(self) -> None:
        """The client closes its connection."""
        self.channel.connectionLost(Failure(ConnectionLost()))

    def received(self) -> bytes:
        """The body the client has been sent so far, de-chunked."""
        _, _, chunked = self.transport.value().partition(b"\r\n\r\n")
        body = b""
        while chunked:
            size, _, rest = chunked.partition(b"\r\n")
            length = int(size, 16)
            if length == 0:
                break
            body += rest[:length]
            chunked = rest[length + 2 :]
        return body


class RelayTestCase(SynchronousTestCase):
    def relay(self, usage_filter: Any = None, capture: int = 0) -> BodyRelay:
        """A relay from a fresh upstream transport to a fresh client, connected."""
        self.clock = task.Clock()
        self.client = _Client()
        self.watch = ClientWatch(self.client.request)
        self.parser = _Parser()
        self.upstream = StringTransport()
        relay = BodyRelay(
            self.client.request,
            self.watch,
            self.parser,
            usage_filter,
            idle_timeout=IDLE_TIMEOUT,
            clock=self.clock,
            capture=capture,
        )
        relay.makeConnection(self.upstream)
        return relay


class ChunkTests(RelayTestCase):
    def test_chunks_pass_in_order(self) -> None:
        """Each upstream chunk reaches the client as it arrives, and the parser reads it too."""
        relay = self.relay()
        relay.dataReceived(b"data: one\n\n")
        self.assertEqual(self.client.received(), b"data: one\n\n")
        relay.dataReceived(b"data: two\n\n")
        self.assertEqual(self.client.received(), b"data: one\n\ndata: two\n\n")
        self.assertEqual(self.parser.fed, [b"data: one\n\n", b"data: two\n\n"])

    def test_filter_sees_client_bytes_only(self) -> None:
        """The usage filter shapes what the client gets; the parser reads the upstream's bytes."""
        relay = self.relay(usage_filter=_Shout())
        relay.dataReceived(b"abc")
        relay.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.client.received(), b"ABCTAIL")
        self.assertEqual(self.parser.fed, [b"abc"])

    def test_capture_is_bounded(self) -> None:
        """Body storage keeps the first C{capture} bytes the client got; the client gets all."""
        relay = self.relay(capture=5)
        relay.dataReceived(b"abc")
        relay.dataReceived(b"defgh")
        self.assertEqual(bytes(relay.captured), b"abcde")
        self.assertEqual(self.client.received(), b"abcdefgh")


class BackpressureTests(RelayTestCase):
    def test_slow_client_pauses_upstream(self) -> None:
        """A client whose buffer is full pauses the upstream; draining it resumes the upstream."""
        self.relay()
        self.assertEqual(self.upstream.producerState, "producing")
        self.client.buffer_full()
        self.assertEqual(self.upstream.producerState, "paused")
        self.client.buffer_drained()
        self.assertEqual(self.upstream.producerState, "producing")

    def test_finish_unregisters_upstream(self) -> None:
        """Once the body ends, the upstream is no longer the client's producer."""
        relay = self.relay()
        relay.connectionLost(Failure(ResponseDone()))
        self.client.buffer_full()
        self.assertEqual(self.upstream.producerState, "producing")


class EndingTests(RelayTestCase):
    def test_complete_body(self) -> None:
        """An upstream body that ends cleanly is complete, with no error."""
        relay = self.relay()
        relay.dataReceived(b"{}")
        relay.connectionLost(Failure(ResponseDone()))
        self.assertIs(self.successResultOf(relay.done), True)
        self.assertIsNone(relay.error_message)

    def test_potential_data_loss_is_complete(self) -> None:
        """A body without a declared length ends when the connection does: complete."""
        relay = self.relay()
        relay.connectionLost(Failure(http.PotentialDataLoss()))
        self.assertIs(self.successResultOf(relay.done), True)

    def test_broken_body(self) -> None:
        """An upstream that breaks off mid-body leaves it incomplete, and says so."""
        relay = self.relay()
        relay.dataReceived(b'{"id": ')
        relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
        self.assertIs(self.successResultOf(relay.done), False)
        self.assertIsNotNone(relay.error_message)
        assert relay.error_message is not None
        self.assertTrue(relay.error_message.startswith("Upstream body incomplete"))


class ClientDepartureTests(RelayTestCase):
    def test_client_leaves_mid_stream(self) -> None:
        """
        A client that leaves mid-stream stops the upstream at once; what the
        upstream still sends is read for usage but written nowhere, and the
        body counts as incomplete.
        """
        relay = self.relay()
        relay.dataReceived(b"first")
        self.client.leave()
        self.assertTrue(self.watch.gone)
        self.assertEqual(self.upstream.producerState, "stopped")
        sent = self.client.transport.value()
        relay.dataReceived(b"late")
        self.assertEqual(self.client.transport.value(), sent)
        self.assertEqual(self.parser.fed, [b"first", b"late"])
        relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
        self.assertIs(self.successResultOf(relay.done), False)
        self.assertEqual(
            relay.error_message, "Client disconnected before the response was complete"
        )

    def test_client_left_before_body(self) -> None:
        """A client gone before the body starts stops the upstream as soon as it connects."""
        clock = task.Clock()
        client = _Client()
        watch = ClientWatch(client.request)
        client.leave()
        upstream = StringTransport()
        relay = BodyRelay(
            client.request, watch, _Parser(), None, idle_timeout=IDLE_TIMEOUT, clock=clock
        )
        relay.makeConnection(upstream)
        self.assertEqual(upstream.producerState, "stopped")
        relay.connectionLost(Failure(ResponseDone()))
        self.assertIs(self.successResultOf(relay.done), False)

    def test_client_leaves_while_upstream_thinks(self) -> None:
        """The request to the upstream is cancelled when the client leaves before it answers."""
        client = _Client()
        watch = ClientWatch(client.request)
        pending: defer.Deferred[None] = defer.Deferred()
        self.assertIs(watch.track(pending), pending)
        client.leave()
        self.failureResultOf(pending, defer.CancelledError)

    def test_answered_request_not_cancelled(self) -> None:
        """A request the upstream has answered is left alone when the client leaves after."""
        client = _Client()
        watch = ClientWatch(client.request)
        answered = watch.track(defer.succeed("response"))
        client.leave()
        self.assertEqual(self.successResultOf(answered), "response")


class IdleTests(RelayTestCase):
    def test_silent_upstream_cut_off(self) -> None:
        """An upstream silent for idle_timeout seconds is stopped, and the row says why."""
        relay = self.relay()
        self.clock.advance(IDLE_TIMEOUT)
        self.assertEqual(self.upstream.producerState, "stopped")
        assert relay.error_message is not None
        self.assertIn("upstream.idle_timeout", relay.error_message)

    def test_each_chunk_restarts_the_clock(self) -> None:
        """The idle timeout counts from the last chunk, not from the start of the body."""
        relay = self.relay()
        for _ in range(3):
            self.clock.advance(IDLE_TIMEOUT * 0.9)
            relay.dataReceived(b".")
        self.assertEqual(self.upstream.producerState, "producing")
        relay.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNone(relay.error_message)
