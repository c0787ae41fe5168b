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

Agent also builds a new endpoint (and, for HTTPS, new TLS options) for every
request, even when a pooled connection will carry it: about 6% of the
gateway's CPU.  The gateway talks to a handful of providers, so it builds
each provider's endpoint once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    ContentDecoderAgent,
    GzipDecoder,
    HTTPConnectionPool,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer


@implementer(IAgentEndpointFactory)
class ReusedEndpoints:
    """
    Endpoints as Agent makes them (TCP for http, TLS with the system's trust
    roots for https), made once per scheme, host and port and then reused:
    an endpoint holds no per-connection state, and each new connection
    still resolves the host name afresh.
    """

    def __init__(self, reactor: Any, connect_timeout: float, tls: Any = None) -> None:
        self._reactor = reactor
        self._connect_timeout = connect_timeout
        self._tls = tls if tls is not None else BrowserLikePolicyForHTTPS()
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = self._make(uri)
        return endpoint

    def _make(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        tcp = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._connect_timeout)
        if uri.scheme == b"http":
            return tcp
        if uri.scheme == b"https":
            return wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), tcp)
        raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")


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

    def __init__(
        self, reactor: Any, max_per_host: int, connect_timeout: float, tls: Any = None
    ) -> None:
        """C{tls}: an IPolicyForHTTPS; the system's trust roots if None."""
        self._reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_per_host
        self.pool.retryAutomatically = False  # POST is never safe to replay
        endpoints = ReusedEndpoints(reactor, connect_timeout, tls)
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self.pool)
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
