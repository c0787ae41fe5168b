# -*- test-case-name: tests.test_streaming -*-
"""
Relaying one upstream response body to the client: chunk by chunk, with
backpressure both ways, an idle timeout, and the client's departure stopping
the upstream at once.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.client import ResponseDone
from twisted.web.server import Request

from majordomo.usage import UsageParser
from majordomo.usage.openai import UsageChunkFilter


class ClientWatch:
    """
    Follows the client's connection for one exchange: when the client goes
    away, whatever is in progress upstream (the request, or the body being
    relayed) is stopped at once.
    """

    def __init__(self, request: Request) -> None:
        self.gone = False
        self._pending: defer.Deferred[Any] | None = None
        self._producer: IPushProducer | None = None
        request.notifyFinish().addErrback(self._lost)

    def track(self, pending: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """Cancel C{pending} if the client leaves before it fires."""
        self._pending = pending
        return pending

    def relaying(self, producer: IPushProducer) -> None:
        """Stop C{producer} (the upstream body) if the client leaves."""
        self._pending = None
        self._producer = producer

    def _lost(self, failure: Failure) -> None:
        self.gone = True
        if self._pending is not None and not self._pending.called:
            self._pending.cancel()
        if self._producer is not None:
            self._producer.stopProducing()


class BodyRelay(Protocol):
    """
    Writes each upstream body chunk to the client as it arrives and feeds it to
    the usage parser.  The upstream transport is registered as the client
    request's producer, so a slow client pauses the upstream.
    """

    def __init__(
        self,
        request: Request,
        client: ClientWatch,
        parser: UsageParser,
        usage_filter: UsageChunkFilter | None,
        idle_timeout: float,
        clock: IReactorTime,
        capture: int = 0,
    ) -> None:
        self._request = request
        self._capture = capture
        self.captured = bytearray()  # what the client got, up to `capture` bytes
        self._client = client
        self._parser = parser
        self._filter = usage_filter
        self._idle_timeout = idle_timeout
        self._idle: IDelayedCall | None = clock.callLater(idle_timeout, self._went_idle)
        self.done: defer.Deferred[bool] = defer.Deferred()
        self.error_message: str | None = None

    def _went_idle(self) -> None:
        """The upstream sent nothing for idle_timeout seconds: cut it off."""
        self._idle = None
        self.error_message = (
            f"Upstream sent nothing for {self._idle_timeout:g}s (upstream.idle_timeout); "
            "response cut"
        )
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def connectionMade(self) -> None:
        if self._client.gone:
            self.error_message = "Client disconnected before the response was complete"
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        # The response body's transport is the upstream connection's: a push producer.
        upstream = cast(IPushProducer, self.transport)
        self._request.registerProducer(upstream, True)
        self._client.relaying(upstream)

    def dataReceived(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.reset(self._idle_timeout)
        self._parser.feed(data)
        if self._client.gone:
            return
        if self._filter is not None:
            data = self._filter.filter(data)
        self._send(data)

    def _send(self, data: bytes) -> None:
        """To the client, and kept for body storage (up to the capture limit)."""
        if data:
            self._request.write(data)
            if len(self.captured) < self._capture:
                self.captured += data[: self._capture - len(self.captured)]

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._client.gone:
            self.error_message = "Client disconnected before the response was complete"
        else:
            if self._filter is not None:
                self._send(self._filter.flush())
            self._request.unregisterProducer()
        complete = reason.check(ResponseDone, http.PotentialDataLoss) is not None
        if not complete and self.error_message is None:
            self.error_message = f"Upstream body incomplete: {reason.getErrorMessage()}"
        self.done.callback(complete and not self._client.gone)
