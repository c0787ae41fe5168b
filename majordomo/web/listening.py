# -*- test-case-name: tests.test_fd_exhaustion -*-
"""
The gateway's listening port, which backs off when it cannot accept.

With no file descriptor free, C{accept()} fails with EMFILE while the
connection stays queued, so the listening socket stays readable and
Twisted's port is called again at once: the reactor spins at 100% CPU for as
long as the shortage lasts (Twisted closes queued connections with a spare
descriptor it keeps, but only while it still has that spare; one taken by a
resolver thread meanwhile is gone for good).  L{BackoffPort} stops reading
the socket for a while instead, from 10 ms doubling up to 1 s while the
shortage lasts, closes the queued connections with a spare descriptor of its
own (a closed connection is a prompt answer; a queued one waits as long as
the shortage does), and says so once per shortage, not once per connection.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.logger import Logger, LogPublisher

log = Logger()

BACKOFF_FIRST = 0.01
BACKOFF_LONGEST = 1.0
# Queued connections closed per shortage turn, at most (the kernel queues up
# to the listen backlog).
SHED_AT_MOST = 4096
BACKLOG = 1024

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _spare() -> int | None:
    """A descriptor held in reserve, to accept (and close) a connection with."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class _Listener:
    """The listening socket, telling C{refused} when accept() finds no resources."""

    def __init__(self, listening: socket.socket, refused: Callable[[int], None]) -> None:
        self._socket = listening
        self._refused = refused

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            return self._socket.accept()
        except OSError as e:
            if e.errno in _OUT_OF_RESOURCES:
                self._refused(e.errno)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)


class BackoffPort(tcp.Port):
    """A TCP port that pauses accepting while the process is out of descriptors."""

    # Twisted logs a line per connection it closes for want of a descriptor;
    # this port says it once per shortage.
    _logger = Logger(namespace="twisted.internet.tcp.Port", observer=LogPublisher())

    _refusal: int | None = None
    _shortage_since: float | None = None
    _delay = BACKOFF_FIRST
    _resuming: Any = None
    _spare_fd: int | None = None

    def startListening(self) -> None:
        super().startListening()
        self.socket = _Listener(self.socket, self._note_refusal)
        self._spare_fd = _spare()

    @property
    def _clock(self) -> Any:
        return self.reactor

    def _note_refusal(self, code: int) -> None:
        self._refusal = code

    def doRead(self) -> None:
        self._refusal = None
        super().doRead()
        if self._refusal is not None:
            self._close_queued()
            self._back_off(self._refusal)
        elif self._shortage_since is not None:
            lasted = self._clock.seconds() - self._shortage_since
            self._shortage_since, self._delay = None, BACKOFF_FIRST
            log.info("Accepting connections again (after {lasted:.1f} s)", lasted=lasted)

    def _close_queued(self) -> None:
        """Accept the queued connections on the spare descriptor, closing each."""
        if self._spare_fd is None:
            return
        os.close(self._spare_fd)
        try:
            for _ in range(SHED_AT_MOST):
                client, _ = self.socket.accept()
                client.close()
        except OSError:
            pass  # none queued any more, or the freed descriptor was taken meanwhile
        finally:
            self._spare_fd = _spare()

    def _back_off(self, code: int) -> None:
        if self._shortage_since is None:
            self._shortage_since = self._clock.seconds()
            log.warn(
                "Cannot accept connections: {error}; closing new ones, trying again "
                "every {longest:.0f} s at most",
                error=os.strerror(code),
                longest=BACKOFF_LONGEST,
            )
        else:
            self._delay = min(self._delay * 2, BACKOFF_LONGEST)
        self.stopReading()
        self._resuming = self._clock.callLater(self._delay, self._resume)

    def _resume(self) -> None:
        self._resuming = None
        if self._spare_fd is None:
            self._spare_fd = _spare()
        if self.connected and not self.disconnecting:
            self.startReading()

    def connectionLost(self, reason: Any) -> None:
        if self._resuming is not None and self._resuming.active():
            self._resuming.cancel()
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
        super().connectionLost(reason)


def listen_tcp(reactor: Any, port: int, factory: Any, interface: str) -> BackoffPort:
    """Listen on C{interface}:C{port} (IPv4 or IPv6), as reactor.listenTCP does."""
    listening = BackoffPort(port, factory, BACKLOG, interface, reactor)
    listening.startListening()
    return listening


def adopt_port(reactor: Any, fd: int, family: int, factory: Any) -> BackoffPort:
    """Listen on a copy of listening socket C{fd}, as reactor.adoptStreamPort does."""
    listening = BackoffPort._fromListeningDescriptor(reactor, fd, family, factory)
    listening.startListening()
    return listening
