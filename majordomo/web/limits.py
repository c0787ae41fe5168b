# -*- test-case-name: tests.test_limits,tests.test_hostile_heads -*-
"""
Bounded requests: a request head must arrive within C{server.head_timeout}
seconds of its first byte and fit in L{MAX_HEAD_BYTES} and
L{MAX_HEADER_LINES}; a request body may be at most C{server.max_body_size}
bytes and must arrive within C{server.body_timeout} seconds of its head.

twisted.web reads a whole request before any resource sees it, so the limits
are enforced while it is still arriving: the head by the L{BoundedChannel},
the body by the L{BoundedRequest} the L{Site} makes.  A C{Content-Length} over
the limit is answered with 413 as soon as the head is in, a chunked body with
413 as soon as it crosses the limit, a head or body that is too slow with
408, a head that is too large with 431 and a malformed one with 400.  Each
answer is an error in the caller's provider format, followed by closing the
connection, so the rest of the request is never read.

twisted.web's own idle timeout (restarted by every byte) never closes a
connection while a head or body is arriving: that request's own timer bounds
it and answers it, so a stalled client always gets its 408.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.http_headers import Headers
from twisted.web.iweb import INonQueuedRequestFactory
from zope.interface import implementer

from majordomo import providers
from majordomo.providers import secrets

log = Logger()

# A request head (request line and header lines) may be this large: the
# documented metadata maximum (32 headers of 64-character names and 512-byte
# values, about 19 KB) plus 45 KB for the request line and ordinary headers,
# several times what SDKs and the proxies in front of them send.
MAX_HEAD_BYTES = 64 * 1024
# Header lines per head: the 32 metadata headers plus 224 others (SDKs send
# about 20, proxies and tracing add a dozen).
MAX_HEADER_LINES = 256

DEFAULT_HEAD_TIMEOUT = 30.0  # seconds; server.head_timeout
HEAD_TOO_LARGE = 431  # RFC 6585; twisted.web names neither the code nor its phrase
_REASONS = {**http.RESPONSES, HEAD_TOO_LARGE: b"Request Header Fields Too Large"}
# After a refusal the rest of the request is read and dropped for this long,
# up to this much, before the connection closes (a lingering close): closing
# with the client's bytes unread resets the connection under its writes.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 * 1024 * 1024

# Called once per rejected request with (request_headers, method, path, status,
# message).  The path is the raw request target: redact it before storing it.
RejectionHook = Callable[[Headers, str, str, int, str], None]


@implementer(INonQueuedRequestFactory)
class BoundedRequestFactory:
    """
    The C{requestFactory} of a L{Site} whose requests are bounded (see
    L{limit_request_bodies}); its L{BoundedChannel}s read their limits here.

    C{on_rejected} may be set after the site is built; each rejection reads it.
    """

    def __init__(
        self,
        max_body_size: int,
        body_timeout: float,
        clock: IReactorTime | None = None,
        on_rejected: RejectionHook | None = None,
        head_timeout: float = DEFAULT_HEAD_TIMEOUT,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout
        self.head_timeout = head_timeout
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
    head_timeout: float = DEFAULT_HEAD_TIMEOUT,
) -> BoundedRequestFactory:
    """Make C{site} bound every request head and body; returns the factory it now uses."""
    factory = BoundedRequestFactory(max_body_size, body_timeout, clock, on_rejected, head_timeout)
    # Site documents requestFactory as "callable or class"; its inferred type is a class.
    site.requestFactory = cast(Any, factory)
    site.protocol = BoundedChannel  # type: ignore[assignment]
    return factory


class BoundedChannel(http.HTTPChannel):
    """
    An HTTP/1.1 connection whose request heads are bounded in time and size,
    and whose refusals are answered in the caller's provider format.

    The head timer starts with the first byte of each request head (on a
    fresh connection or a kept-alive one) and stops when the head is
    complete; a connection waiting for its next request sends nothing and is
    bounded by twisted.web's idle timeout instead.
    """

    totalHeadersSize = MAX_HEAD_BYTES
    maxHeaders = MAX_HEADER_LINES
    MAX_LENGTH = MAX_HEAD_BYTES  # one header line may be as long as a whole head
    requestFactory: Any  # set by the Site: a BoundedRequestFactory

    _head_timer: IDelayedCall | None = None
    _arriving = False  # a request head or body is arriving: its own timer runs
    _refused = False
    _lingering: IDelayedCall | None = None  # refused: reading what is left, to drop it
    _dropped = 0

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            self._drop(data)
            return
        if data and not self._arriving and self.line_mode and not self._handlingRequest:
            self._arriving = True
            limits: BoundedRequestFactory = self.requestFactory
            self._head_timer = limits.clock.callLater(limits.head_timeout, self._head_too_slow)
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._stop_head_timer()
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._arriving = False
        super().allContentReceived()

    def timeoutConnection(self) -> None:
        """The idle timeout: ignored while a request arrives (its own timer answers it)."""
        if not self._arriving:
            super().timeoutConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_head_timer()
        if self._lingering is not None and self._lingering.active():
            self._lingering.cancel()
        super().connectionLost(reason)

    def _linger(self, transport: Any, clock: IReactorTime) -> None:
        """
        Send the answer and end our side of the connection, but go on
        reading (and dropping) what the client still sends, for up to
        L{LINGER_SECONDS} and L{LINGER_BYTES}: a client busy uploading its
        body then finishes and reads its answer instead of being reset.
        """
        half_close = getattr(transport, "loseWriteConnection", None)
        if half_close is None:
            self.loseConnection()
            return
        half_close()
        self._lingering = clock.callLater(LINGER_SECONDS, transport.loseConnection)

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            self._drop(data)
        else:
            super().rawDataReceived(data)

    def _drop(self, data: bytes) -> None:
        """Bytes that arrive after a refusal: dropped, within the lingering bounds."""
        self._dropped += len(data)
        if self._dropped > LINGER_BYTES and self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._head_too_large()

    def _respondToBadRequestAndDisconnect(self) -> None:
        """twisted.web refuses a request it cannot parse, or a head over a limit."""
        if self._receivedHeaderSize > self.totalHeadersSize:
            self._head_too_large()
        elif self._receivedHeaderCount > self.maxHeaders:
            self.refuse(
                HEAD_TOO_LARGE,
                f"Request head has more than the gateway's limit of {self.maxHeaders} header lines",
            )
        else:
            self.refuse(http.BAD_REQUEST, "Malformed HTTP/1.1 request")

    def _head_too_large(self) -> None:
        self.refuse(
            HEAD_TOO_LARGE,
            f"Request head exceeds the gateway's limit of {self.totalHeadersSize} bytes",
        )

    def _head_too_slow(self) -> None:
        self._head_timer = None
        limits: BoundedRequestFactory = self.requestFactory
        self.refuse(
            http.REQUEST_TIMEOUT,
            f"Request head not received within {limits.head_timeout:g} seconds",
        )

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def refuse(self, status: int, message: str) -> None:
        """
        Answer the request arriving now in its provider's error format and
        close; the rest of it is never read.  The C{on_rejected} hook is told
        once the request line is known.  Only the first refusal counts.
        """
        if self._refused:
            return
        self._refused = True
        self._stop_head_timer()
        # The parsed request line, kept here until the whole request is in.
        method = getattr(self, "_command", b"").decode("latin-1")
        path = getattr(self, "_path", b"").decode("latin-1")
        headers = self.requests[-1].requestHeaders if self.requests else Headers()
        # The provider whose error format the caller expects (the gateway's one
        # rule; an X-Majordomo-Provider it would refuse does not matter here).
        provider = providers.choose_provider(headers, path).provider
        body = providers.error_body(provider, status, message)
        # Written straight to the transport, as HTTPChannel does for its own
        # 400s: the Request machinery only responds once the body is complete.
        transport = self.transport
        if transport is None:
            return
        transport.write(
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s"
            % (status, _REASONS.get(status, b"Error"), len(body), body)
        )
        # Nothing more of this connection is parsed: the line parser hands
        # the rest of this read, and every later one, to rawDataReceived.
        self.setRawMode()
        limits: BoundedRequestFactory = self.requestFactory
        self._linger(transport, limits.clock)
        # A client that does not read its answer is cut off (twisted.web's own
        # idle timeout does the same); connectionLost cancels this.
        self._abortingCall = limits.clock.callLater(self.abortTimeout, self.forceAbortClient)
        log.info(
            "Rejected {method} {path} from {client}: {status} {message}",
            method=method or "-",
            path=secrets.redact_path(path) or "-",
            client=getattr(transport.getPeer(), "host", "?"),
            status=status,
            message=message,
        )
        hook = limits.on_rejected
        if hook is None or not method:
            return
        try:
            hook(headers, method, path, status, message)
        except Exception:
            log.failure("The on_rejected hook failed for {path}", path=secrets.redact_path(path))


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

    def _handleStar(self) -> None:
        """
        The asterisk-form target (C{OPTIONS *}) goes to the gateway's
        resources like any other, to be refused there with its row, instead
        of getting twisted.web's own empty answer that no row records.
        """
        site = self.site
        assert site is not None  # process() has set it
        try:
            self.render(site.getResourceFor(self))
        except BaseException:
            self.processingFailed(Failure())

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
        # The channel is one limit_request_bodies' site made.
        cast(BoundedChannel, self.channel).refuse(status, message)
        if self.content is not None:
            self.content.close()
            self.content = None
