"""
Streams through the gateway: chunk by chunk, usage asked for and hidden,
backpressure from a slow client, and a client that hangs up.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests import support
from tests.gateway_case import GatewayTestCase
from tests.vectors import VECTORS, load_vector

STREAM_REQUEST = {
    "model": "gpt-4o",
    "stream": True,
    "messages": [{"role": "user", "content": "Hi"}],
}


def _chunk(n: int) -> bytes:
    event = {"object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06", "usage": None}
    event["choices"] = [{"index": 0, "delta": {"content": f"tok{n}"}}]
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class ManualStream(Resource):
    """An SSE upstream the test drives: it writes only when told to."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.request: Any = None
        self.arrived: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def render_POST(self, request: Any) -> Any:
        self.request = request
        request.setHeader(b"content-type", b"text/event-stream")
        request.notifyFinish().addBoth(lambda _: self.lost.callback(None))
        request.write(b"")  # send headers now
        self.arrived.callback(None)
        return NOT_DONE_YET


class Firehose(Resource):
    """An upstream that writes as fast as its client lets it (a pull producer)."""

    isLeaf = True
    CHUNK = b"data: " + b"x" * 65530 + b"\n\n"

    def __init__(self, total_chunks: int) -> None:
        super().__init__()
        self.remaining = total_chunks
        self.sent = 0

    def render_POST(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"text/event-stream")
        self.request = request
        request.registerProducer(self, False)
        return NOT_DONE_YET

    def resumeProducing(self) -> None:
        if self.remaining == 0:
            self.request.unregisterProducer()
            self.request.finish()
            return
        self.remaining -= 1
        self.sent += len(self.CHUNK)
        self.request.write(self.CHUNK)

    def stopProducing(self) -> None:
        self.remaining = 0


class RawClient(protocol.Protocol):
    """A client that sends one request and reads only when allowed to."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = 0
        self.data = b""
        self.keep = False
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.keep:
            self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(None)


def _http_request(path: str, body: bytes, key: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"X-Majordomo-Key: {key}\r\nAuthorization: Bearer sk-x\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def hang_up_mid_stream(case: Any, upstream: ManualStream, body: dict[str, Any]) -> float:
    """
    POST C{body} through C{case}'s gateway, let C{upstream} send its first
    chunk, and hang up as soon as the client has it; returns when it hung up.
    """
    client = RawClient(_http_request("/v1/chat/completions", json.dumps(body).encode(), case.key))
    client.keep = True
    await protocol.ClientCreator(reactor, lambda: client).connectTCP(
        "127.0.0.1", case.gateway.port.getHost().port
    )
    await upstream.arrived
    upstream.request.write(_chunk(0))
    await support.wait_for(lambda: b"tok0" in client.data, timeout=5)
    hung_up: float = reactor.seconds()
    client.transport.loseConnection()
    return hung_up


def _stream_request(key: str) -> bytes:
    return _http_request("/v1/chat/completions", json.dumps(STREAM_REQUEST).encode(), key)


class StreamingTests(GatewayTestCase):
    """What a streaming client sees, and what is recorded."""

    def test_chunks_arrive_as_sent(self) -> defer.Deferred[None]:
        """
        Each chunk reaches the client before the provider sends the next one:
        the gateway does not buffer a stream.
        """
        upstream = ManualStream()
        self.use_upstream(upstream)

        async def go() -> None:
            client = RawClient(
                _http_request("/v1/chat/completions", json.dumps(STREAM_REQUEST).encode(), self.key)
            )
            client.keep = True
            await protocol.ClientCreator(reactor, lambda: client).connectTCP(
                "127.0.0.1", self.gateway.port.getHost().port
            )
            await upstream.arrived
            for n in range(5):
                upstream.request.write(_chunk(n))
                await support.wait_for(lambda n=n: f"tok{n}".encode() in client.data, timeout=5)
                self.assertNotIn(f"tok{n + 1}".encode(), client.data)
            upstream.request.finish()
            await client.closed

        return support.as_deferred(go())

    def test_usage_requested_and_hidden(self) -> defer.Deferred[None]:
        """
        A client that did not ask for usage: the gateway asks the provider for
        it, removes the extra usage chunk from what the client receives, and
        records complete usage and cost.
        """

        async def go() -> None:
            vector = load_vector(f"{VECTORS}/03_openai_chat_stream_include_usage.json")
            recorded = vector["response_body"].encode()
            self.upstream.queue = [
                support.Canned(headers={"Content-Type": "text/event-stream"}, chunks=[recorded])
            ]
            request = dict(vector["request_body"])
            del request["stream_options"]
            response, body = await self.post(
                "/v1/chat/completions", request, X_Majordomo_Key=self.key
            )
            sent = json.loads(self.upstream.received[0]["body"])
            self.assertEqual(sent["stream_options"], {"include_usage": True})
            events = [e for e in body.split(b"\n\n") if e]
            self.assertFalse([e for e in events if b'"usage": {' in e or b'"usage":{' in e])
            self.assertEqual(events[-1], b"data: [DONE]")
            self.assertEqual(len(events), len([e for e in recorded.split(b"\n\n") if e]) - 1)
            (row,) = await self.rows()
            self.assertEqual(row["usage_status"], "complete")
            self.assertEqual((row["input_tokens"], row["output_tokens"]), (19, 9))
            self.assertTrue(row["stream"])
            self.assertIsNotNone(row["total_cost"])

        return support.as_deferred(go())

    def test_client_disconnect_stops_upstream_and_keeps_row(self) -> defer.Deferred[None]:
        """
        A client that hangs up mid-stream: the gateway drops the upstream
        connection at once, and still writes the row with what it knows.
        """
        upstream = ManualStream()
        self.use_upstream(upstream)

        async def go() -> None:
            hung_up = await hang_up_mid_stream(self, upstream, STREAM_REQUEST)
            await upstream.lost
            self.assertLess(reactor.seconds() - hung_up, 0.5)
            (row,) = await self.rows()
            self.assertEqual(row["status_code"], 200)
            self.assertEqual(row["usage_status"], "missing_stream_truncated")
            self.assertIsNone(row["total_cost"])
            self.assertIn("Client disconnected", row["error_message"])
            self.assertEqual(row["model"], "gpt-4o-2024-08-06")

        return support.as_deferred(go())

    def test_slow_client_pauses_upstream(self) -> defer.Deferred[None]:
        """
        A client that stops reading makes the provider stop sending (the
        gateway holds at most a few socket buffers, not the stream); when it
        reads again, every byte arrives.
        """
        chunks = 400  # 26 MB in all
        upstream = Firehose(chunks)
        self.use_upstream(upstream)

        async def go() -> None:
            client = RawClient(
                _http_request("/v1/chat/completions", json.dumps(STREAM_REQUEST).encode(), self.key)
            )
            await protocol.ClientCreator(reactor, lambda: client).connectTCP(
                "127.0.0.1", self.gateway.port.getHost().port
            )
            client.transport.pauseProducing()
            await support.wait_for(lambda: upstream.sent > 0, timeout=5)
            await defer.Deferred.fromCoroutine(_sleep(1.0))
            stalled_at = upstream.sent
            await defer.Deferred.fromCoroutine(_sleep(0.5))
            self.assertEqual(upstream.sent, stalled_at, "upstream kept sending to a paused client")
            self.assertLess(stalled_at, 16 * 1024 * 1024)
            client.transport.resumeProducing()
            await client.closed
            self.assertEqual(upstream.sent, chunks * len(Firehose.CHUNK))
            self.assertGreater(client.received, upstream.sent)
            (row,) = await self.rows()
            self.assertEqual(row["status_code"], 200)

        return support.as_deferred(go())


async def _sleep(seconds: float) -> None:
    from twisted.internet import task

    await task.deferLater(reactor, seconds, lambda: None)
