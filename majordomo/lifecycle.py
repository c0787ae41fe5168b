# -*- test-case-name: tests.test_service -*-
"""
The pieces of a service tree whose parts start in order and stop in the
reverse order, one after the other.

A plain C{MultiService} stops its children all at once and swallows their
errors; the gateway must stop listening before it drains its requests, drain
them before the log writer flushes, and flush before the database closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from majordomo.inflight import bounded

log = Logger()

Step = Callable[[], "defer.Deferred[None] | None"]


class CannotStart(Exception):
    """A part cannot start (it has logged why): the parts after it are not started."""


def _nothing() -> None:
    return None


class Part(service.Service):
    """
    One part of the tree, adapted from whatever its own start and stop are
    called: C{start} may raise L{CannotStart}; both may return a Deferred
    when their work is asynchronous.
    """

    def __init__(self, name: str, start: Step = _nothing, stop: Step = _nothing) -> None:
        self.setName(name)
        self._start = start
        self._stop = stop

    def startService(self) -> defer.Deferred[None] | None:
        result = self._start()  # first: a part that cannot start is not running
        super().startService()
        return result

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        stopped = self._stop()
        return defer.succeed(None) if stopped is None else stopped


class Runs(Protocol):
    """What a part needs of a service it runs: Twisted's start and stop."""

    def startService(self) -> defer.Deferred[None] | None: ...

    def stopService(self) -> defer.Deferred[None] | None: ...


class Guarded(service.Service):
    """
    Runs the service C{inner} as one part of the tree, which must not hang
    on it: its stop is given at most C{stop_within} seconds, after which the
    tree stops its next part.  With C{start_failed}, a start whose Deferred
    fails is logged as critical, C{start_failed} saying what that means,
    followed by the error (the tree does not wait for that Deferred).
    """

    def __init__(
        self,
        name: str,
        inner: Runs,
        clock: IReactorTime,
        stop_within: float,
        start_failed: str | None = None,
    ) -> None:
        self.setName(name)
        self.inner = inner
        self._clock = clock
        self._stop_within = stop_within
        self._start_failed = start_failed

    def startService(self) -> defer.Deferred[None] | None:
        started = self.inner.startService()  # first: a part that cannot start is not running
        super().startService()
        if started is not None and self._start_failed is not None:
            started.addErrback(
                lambda f: log.critical(
                    "{consequence}: {error}",
                    consequence=self._start_failed,
                    error=f.getErrorMessage(),
                )
            )
        return started

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        stopped = self.inner.stopService()
        if stopped is None:
            return defer.succeed(None)
        return bounded(stopped, self._stop_within, self._clock)


class AfterConnected(service.Service):
    """
    Starts C{inner} once C{connected} fires (PostgreSQL first answers), if
    the tree is still running then; stops it only if it was started.
    """

    def __init__(
        self, inner: service.IService, connected: Callable[[], defer.Deferred[None]]
    ) -> None:
        self.setName(f"{inner.name} (after PostgreSQL)")
        self.inner = inner
        self._connected = connected

    def startService(self) -> None:
        super().startService()
        self._connected().addCallback(self._start_inner).addErrback(
            lambda f: log.failure("Starting {name} failed", f, name=self.inner.name)
        )

    def _start_inner(self, _: object) -> None:
        if self.running and (self.parent is None or self.parent.running):
            self.inner.startService()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if not self.inner.running:
            return defer.succeed(None)
        return defer.maybeDeferred(self.inner.stopService)


class ThreadPoolService(service.Service):
    """A thread pool of a part's own, running while the tree does."""

    def __init__(self, pool: ThreadPool) -> None:
        self.setName(pool.name or "threads")
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class InOrder(service.MultiService):
    """
    Starts its children in the order they were added, each at once (none
    waits for another's Deferred: the gateway listens while PostgreSQL is
    away); a child that cannot start leaves the later ones unstarted.
    Stops the started ones in the reverse order, each after the one before
    it has finished, logging (not raising) a failure.
    """

    def startService(self) -> None:
        service.Service.startService(self)
        for child in self:
            child.startService()  # L{CannotStart} propagates to the caller

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return defer.Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            if not child.running:
                continue
            try:
                await defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("Stopping {name} failed", name=child.name)
