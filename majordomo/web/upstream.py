# -*- test-case-name: tests.test_gateway -*-
"""
The HTTP client the proxy forwards with: Twisted's Agent on a persistent
connection pool, asking providers for gzip and decoding it (so usage can be
read from the body) in bounded slices (L{majordomo.web.decoding}).

treq's request() does the same, plus URL parsing with hyperlink and
Content-Type parsing with the email package on every call, which measured
at about 22% of the gateway's CPU under load (docs/BENCHMARKS.md); the proxy
already has the URL as bytes and the body as bytes, so it talks to the Agent
directly.  The response body is read with IResponse.deliverBody, unbuffered.

Agent also builds a new endpoint (and, for HTTPS, new TLS options) for every
request, even when a pooled connection will carry it: about 6% of the
gateway's CPU.  The gateway talks to a handful of providers, so it builds
each provider's endpoint once (at startup for the configured ones, with
L{UpstreamClient.prepare}: building a TLS endpoint reads the trust roots,
which must not fail for want of a file descriptor under load).

Host names are resolved by L{majordomo.web.resolver}, whose every resolution
ends: a failure inside the gateway fails the request at once instead of
leaving it to wait for upstream.response_timeout.  Connections that fail for
the gateway's own reasons (no descriptor free, the resolver broken) are
counted, so C{/readyz} can say the gateway cannot forward
(L{UpstreamClient.cannot_forward}).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    ContentDecoderAgent,
    HTTPConnectionPool,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from majordomo.web.decoding import gzip_decoder
from majordomo.web.resolver import answering_reactor


@implementer(IAgentEndpointFactory)
class ReusedEndpoints:
    """
    Endpoints as Agent makes them (TCP for http, TLS with the system's trust
    roots for https), made once per scheme, host and port and then reused:
    an endpoint holds no per-connection state, and each new connection
    still resolves the host name afresh.
    """

    def __init__(
        self,
        reactor: Any,
        connect_timeout: float,
        tls: Any = None,
        on_local_failure: Callable[[str], None] = lambda reason: None,
        getaddrinfo: Callable[..., Any] = socket.getaddrinfo,
    ) -> None:
        self._reactor = answering_reactor(reactor, on_local_failure, getaddrinfo)
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


# Errors that mean the gateway itself is out of something (descriptors,
# buffers, memory), not that the upstream is away.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# /readyz says the gateway cannot forward after this many consecutive local
# failures, until this many seconds pass without one (a gateway taken out of
# rotation gets no traffic that could prove it well again).
LOCAL_FAILURES_UNREADY = 3
LOCAL_FAILURE_MEMORY = 5.0


class UpstreamClient:
    """Sends one request to a provider; fires with its IResponse (body not read yet)."""

    def __init__(
        self,
        reactor: Any,
        max_per_host: int,
        connect_timeout: float,
        tls: Any = None,
        getaddrinfo: Callable[..., Any] = socket.getaddrinfo,
    ) -> None:
        """
        C{tls}: an IPolicyForHTTPS; the system's trust roots if None.
        C{getaddrinfo}: what resolves names (in a thread); for tests.
        """
        self._reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max_per_host
        self.pool.retryAutomatically = False  # POST is never safe to replay
        self._local_failures = 0
        self._last_local_failure = (0.0, "")
        self._endpoints = ReusedEndpoints(
            reactor, connect_timeout, tls, self._failed_locally, getaddrinfo
        )
        agent = Agent.usingEndpointFactory(reactor, self._endpoints, pool=self.pool)
        self._agent = ContentDecoderAgent(agent, [(b"gzip", gzip_decoder(reactor))])

    def request(
        self, method: bytes, url: bytes, headers: Headers, body: bytes | None, timeout: float
    ) -> defer.Deferred[Any]:
        """Forward; cancelled (CancelledError) if no response headers come within C{timeout}."""
        producer = _Body(body) if body else None
        d: defer.Deferred[Any] = self._agent.request(method, url, headers, producer)
        d.addCallbacks(self._forwarded, self._not_forwarded)
        return d.addTimeout(timeout, self._reactor)

    def prepare(self, base_url: str) -> None:
        """Make the endpoint for C{base_url}'s origin now, not on the first request."""
        self._endpoints.endpointForURI(URI.fromBytes(base_url.encode("ascii")))

    def cannot_forward(self) -> str | None:
        """Why recent upstream connections failed inside the gateway, or None."""
        when, reason = self._last_local_failure
        recent = self._reactor.seconds() - when < LOCAL_FAILURE_MEMORY
        if self._local_failures >= LOCAL_FAILURES_UNREADY and recent:
            return f"upstream connections fail inside the gateway ({reason})"
        return None

    def _forwarded(self, response: Any) -> Any:
        self._local_failures = 0
        return response

    def _not_forwarded(self, failure: Failure) -> Failure:
        if failure.check(ConnectError):
            code = getattr(failure.value, "osError", None)
            if code in _OUT_OF_RESOURCES:
                self._failed_locally(f"connecting: {os.strerror(code)}")
        return failure

    def _failed_locally(self, reason: str) -> None:
        self._local_failures += 1
        self._last_local_failure = (self._reactor.seconds(), reason)

    def close(self) -> defer.Deferred[None]:
        """Close the kept-alive connections."""
        closed: defer.Deferred[None] = self.pool.closeCachedConnections()
        return closed
