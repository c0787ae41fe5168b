# -*- test-case-name: tests.test_limits -*-
"""
Bounded request bodies: a request body may be at most C{server.max_body_size}
bytes and must arrive within C{server.body_timeout} seconds of its headers.

twisted.web reads a whole body into memory (or a temporary file) before any
resource sees the request, so the limits are enforced while the body is still
arriving, by the L{Request} the L{Site} makes: a C{Content-Length} over the
limit is answered with 413 as soon as the headers are in, a chunked body with
413 as soon as it crosses the limit, a body that is too slow with 408.  Each
answer is an error in the caller's provider format, followed by closing the
connection, so the rest of the body is never read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.http_headers import Headers
from twisted.web.iweb import INonQueuedRequestFactory
from zope.interface import implementer

from majordomo import providers

log = Logger()

# Called once per rejected request with (request_headers, method, path, status,
# message).  The path is the raw request target: redact it before storing it.
RejectionHook = Callable[[Headers, str, str, int, str], None]


@implementer(INonQueuedRequestFactory)
class BoundedRequestFactory:
    """
    The C{requestFactory} of a L{Site} whose request bodies are bounded
    (see L{limit_request_bodies}).

    C{on_rejected} may be set after the site is built; each rejection reads it.
    """

    def __init__(
        self,
        max_body_size: int,
        body_timeout: float,
        clock: IReactorTime | None = None,
        on_rejected: RejectionHook | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout
        self.clock = clock
        self.on_rejected = on_rejected

    def __call__(self, channel: Any) -> BoundedRequest:
        return BoundedRequest(channel, limits=self)


def limit_request_bodies(
    site: server.Site,
    max_body_size: int,
    body_timeout: float,
    clock: IReactorTime | None = None,
    on_rejected: RejectionHook | None = None,
) -> BoundedRequestFactory:
    """Make C{site} bound every request body; returns the factory it now uses."""
    factory = BoundedRequestFactory(max_body_size, body_timeout, clock, on_rejected)
    # Site documents requestFactory as "callable or class"; its inferred type is a class.
    site.requestFactory = cast(Any, factory)
    return factory


class BoundedRequest(server.Request):
    """A twisted.web request that refuses a body too large or too slow to arrive."""

    def __init__(self, channel: Any, *args: Any, limits: BoundedRequestFactory, **kw: Any) -> None:
        super().__init__(channel, *args, **kw)
        self._limits = limits
        self._body_received = 0
        self._body_timer: IDelayedCall | None = None
        self.rejected = False

    def gotLength(self, length: int | None) -> None:
        """All headers are in: refuse a declared length over the limit, else start the clock."""
        if length is not None and length > self._limits.max_body_size:
            self._reject(
                http.REQUEST_ENTITY_TOO_LARGE,
                f"Request body of {length} bytes exceeds the gateway's limit of "
                f"{self._limits.max_body_size} bytes",
            )
            # HTTPChannel.allHeadersReceived answers "Expect: 100-continue" right
            # after this method returns; that interim response must not follow
            # our final one.  Without the header, the client never sends the body.
            self.requestHeaders.removeHeader(b"expect")
            return
        super().gotLength(length)
        if length != 0:  # length 0: the request is complete already
            self._body_timer = self._limits.clock.callLater(
                self._limits.body_timeout, self._body_too_slow
            )

    def handleContentChunk(self, data: bytes) -> None:
        """Keep a body chunk, unless the body has now grown past the limit."""
        if self.rejected:
            return  # the rest of a read that crossed the limit: dropped
        self._body_received += len(data)
        if self._body_received > self._limits.max_body_size:
            self._reject(
                http.REQUEST_ENTITY_TOO_LARGE,
                f"Request body exceeds the gateway's limit of {self._limits.max_body_size} bytes",
            )
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole body is in: stop the clock and process the request as usual."""
        self._stop_body_timer()
        if self.rejected:
            # A chunked body can end in the same read that crossed the limit;
            # it has been answered already and must not reach a resource.
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        self._stop_body_timer()
        super().connectionLost(reason)

    def _body_too_slow(self) -> None:
        self._body_timer = None
        self._reject(
            http.REQUEST_TIMEOUT,
            f"Request body not received within {self._limits.body_timeout:g} seconds",
        )

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _reject(self, status: int, message: str) -> None:
        """Answer now in the caller's provider format, close, and drop the body."""
        self.rejected = True
        self._stop_body_timer()
        # method and uri are only set by requestReceived, once the whole body
        # is in; until then the channel holds the parsed request line here.
        method = getattr(self.channel, "_command", b"").decode("latin-1")
        path = getattr(self.channel, "_path", b"").decode("latin-1")
        chosen = (self.requestHeaders.getRawHeaders(b"x-majordomo-provider") or [b""])[-1]
        provider = chosen.decode("latin-1").strip().lower()
        if provider not in providers.PROVIDERS:
            provider = providers.detect_provider(path)
        body = providers.error_body(provider, status, message)
        # Written straight to the transport, as HTTPChannel does for its own
        # 400s: the Request machinery only responds once the body is complete.
        transport = self.channel.transport
        if transport is not None:
            transport.write(
                b"HTTP/1.1 %d %s\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s"
                % (status, http.RESPONSES.get(status, b"Error"), len(body), body)
            )
        self.channel.loseConnection()  # stops reading: the rest of the body is never read
        if self.content is not None:
            self.content.close()
            self.content = None
        log.info(
            "Rejected {method} {path} from {client}: {status} {message}",
            method=method,
            path=providers.redact_path(path),
            client=getattr(self.client, "host", "?"),
            status=status,
            message=message,
        )
        hook = self._limits.on_rejected
        if hook is not None:
            try:
                hook(self.requestHeaders, method, path, status, message)
            except Exception:
                log.failure(
                    "The on_rejected hook failed for {path}", path=providers.redact_path(path)
                )
