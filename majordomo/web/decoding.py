# -*- test-case-name: tests.test_bombs -*-
"""
Decoding a gzip response body in bounded slices, so that no compression
ratio can freeze the reactor or fill the gateway's memory.

Twisted's own C{GzipDecoder} inflates each received chunk in one call: 16 KB
of gzip can become 16 MiB in a single callback, all of it handed on at once.
L{BoundedGunzip} inflates at most L{SLICE} bytes per reactor turn, pauses the
upstream while compressed input is left over, and stands between the relay
and the upstream transport as the producer the client's connection pauses:
a client that stops reading stops the inflating too.
"""

from __future__ import annotations

import zlib
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

# At most this much inflated body per reactor turn (well under a millisecond
# to inflate, relay and parse).
SLICE = 16 * 1024


def gzip_decoder(clock: Any) -> Any:
    """
    A decoder factory for C{ContentDecoderAgent} (in place of
    C{GzipDecoder}) whose bodies are inflated in slices scheduled on C{clock}.
    """

    def decoder(response: IResponse) -> GzipResponse:
        return GzipResponse(response, clock)

    return decoder


class GzipResponse(proxyForInterface(IResponse)):  # type: ignore[misc]
    """A response whose gzip body is delivered inflated, by L{BoundedGunzip}."""

    def __init__(self, response: IResponse, clock: Any) -> None:
        self.original = response
        self.length = UNKNOWN_LENGTH
        self._clock = clock

    def deliverBody(self, protocol: Any) -> None:
        self.original.deliverBody(BoundedGunzip(protocol, self.original, self._clock))


@implementer(IPushProducer)
class BoundedGunzip(Protocol):
    """
    Receives the compressed body from the upstream and gives C{protocol} the
    inflated body, one slice per reactor turn.  C{protocol} sees this object
    as its transport: pausing, resuming or stopping it pauses, resumes or
    stops the inflating, and the upstream with it.
    """

    def __init__(self, protocol: Any, response: IResponse, clock: Any) -> None:
        self._protocol = protocol
        self._response = response
        self._clock = clock
        self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._input = b""  # compressed bytes received, not inflated yet
        self._more = False  # the inflater may hold output without new input
        self._upstream: Any = None
        self._upstream_paused = False
        self._client_paused = False
        self._stopped = False
        self._next: Any = None  # the scheduled slice
        self._ended: Failure | None = None  # the upstream's connectionLost reason
        self._finished = False

    def makeConnection(self, transport: Any) -> None:
        self._upstream = transport
        self.transport = transport
        self._protocol.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        if self._stopped or self._finished:
            return
        self._input = self._input + data if self._input else data
        self._step()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._ended = reason
        if self._stopped or not self._pending():
            self._finish()

    def pauseProducing(self) -> None:
        self._client_paused = True
        self._hold_upstream()

    def resumeProducing(self) -> None:
        self._client_paused = False
        self._hold_upstream()
        self._schedule()

    def stopProducing(self) -> None:
        self._stopped = True
        self._unschedule()
        self._input = b""
        if self._ended is not None:
            self._finish()
        elif self._upstream is not None:
            self._upstream.stopProducing()

    def _pending(self) -> bool:
        return bool(self._input) or self._more

    def _step(self) -> None:
        """Inflate one slice and hand it on; schedule the next if input is left."""
        self._next = None
        if self._stopped or self._finished or self._client_paused:
            return
        try:
            out = self._inflate.decompress(self._input, SLICE)
        except zlib.error:
            self._fail(Failure())
            return
        self._input = self._inflate.unconsumed_tail
        self._more = len(out) == SLICE and not self._inflate.eof
        self._hold_upstream()
        if out:
            self._protocol.dataReceived(out)
        if self._pending():
            self._schedule()
        elif self._ended is not None:
            self._finish()

    def _schedule(self) -> None:
        if (
            self._next is None
            and self._pending()
            and not (self._client_paused or self._stopped or self._finished)
        ):
            self._next = self._clock.callLater(0, self._step)

    def _unschedule(self) -> None:
        if self._next is not None:
            self._next.cancel()
            self._next = None

    def _hold_upstream(self) -> None:
        """Keep the upstream paused while the client is, or while input waits."""
        want = self._client_paused or self._pending()
        if self._upstream is None or want == self._upstream_paused:
            return
        self._upstream_paused = want
        if want:
            self._upstream.pauseProducing()
        else:
            self._upstream.resumeProducing()

    def _fail(self, failure: Failure) -> None:
        """Not gzip after all: cut the upstream; the body ends with the error."""
        self._input, self._more = b"", False
        self._ended = Failure(ResponseFailed([failure], self._response))
        self._stopped = True
        self._unschedule()
        if self._upstream is not None:
            self._upstream.stopProducing()
        self._finish()

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._unschedule()
        reason = self._ended
        if not self._stopped:
            try:
                rest = self._inflate.flush()
            except zlib.error:
                reason = Failure(ResponseFailed([Failure()], self._response))
            else:
                if rest:
                    self._protocol.dataReceived(rest)
        self._protocol.connectionLost(reason)
