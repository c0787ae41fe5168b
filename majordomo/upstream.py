# -*- test-case-name: tests.test_gateway -*-
"""
The HTTP client the proxy forwards with: Twisted's Agent on a persistent
connection pool, asking providers for gzip and decoding it (so usage can be
read from the body).

treq's request() does the same, plus URL parsing with hyperlink and
Content-Type parsing with the email package on every call, which measured
at about 22% of the gateway's CPU under load (docs/BENCHMARKS.md); the proxy
already has the URL as bytes and the body as bytes, so it talks to the Agent
directly.  The response body is read with IResponse.deliverBody, unbuffered.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.web.client import Agent, ContentDecoderAgent, GzipDecoder, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory, written in one go."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class UpstreamClient:
    """Sends one request to a provider; fires with its IResponse (body not read yet)."""

    def __init__(self, reactor: Any, max_per_host: int, connect_timeout: float) -> None:
        self._reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_per_host
        self.pool.retryAutomatically = False  # POST is never safe to replay
        agent = Agent(reactor, connectTimeout=connect_timeout, pool=self.pool)
        self._agent = ContentDecoderAgent(agent, [(b"gzip", GzipDecoder)])

    def request(
        self, method: bytes, url: bytes, headers: Headers, body: bytes | None, timeout: float
    ) -> defer.Deferred[Any]:
        """Forward; cancelled (CancelledError) if no response headers come within C{timeout}."""
        producer = _Body(body) if body else None
        d: defer.Deferred[Any] = self._agent.request(method, url, headers, producer)
        return d.addTimeout(timeout, self._reactor)

    def close(self) -> defer.Deferred[None]:
        """Close the kept-alive connections."""
        closed: defer.Deferred[None] = self.pool.closeCachedConnections()
        return closed
