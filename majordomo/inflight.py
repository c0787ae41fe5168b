# -*- test-case-name: tests.test_service -*-
"""
Work in flight, tracked as the Deferreds themselves: shutdown waits for the
work to finish rather than polling a counter (buildbot's C{deferwaiter.py}).
"""

from __future__ import annotations

from typing import TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

T = TypeVar("T")


class DeferWaiter:
    """
    Remembers Deferreds until they fire; L{wait} fires once none is left,
    including any added while waiting.
    """

    def __init__(self) -> None:
        self._pending = 0
        self._idle: list[defer.Deferred[None]] = []

    @property
    def count(self) -> int:
        """How many added Deferreds have not fired yet."""
        return self._pending

    def add(self, d: defer.Deferred[T]) -> defer.Deferred[T]:
        """Track C{d} until it fires; its result passes through unchanged."""
        self._pending += 1
        d.addBoth(self._fired)
        return d

    def _fired(self, result: T) -> T:
        self._pending -= 1
        if self._pending == 0:
            idle, self._idle = self._idle, []
            for waiter in idle:
                waiter.callback(None)
        return result

    def wait(self) -> defer.Deferred[None]:
        """
        Fires when every added Deferred has fired (at once if none is
        pending).  Cancelling it stops only this wait, never the work.
        """
        if self._pending == 0:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred(self._idle.remove)
        self._idle.append(waiter)
        return waiter


def bounded(d: defer.Deferred[None], seconds: float, clock: IReactorTime) -> defer.Deferred[None]:
    """C{d}, or nothing after C{seconds}: shutdown must not hang."""
    d.addTimeout(seconds, clock)
    return d.addErrback(lambda f: f.trap(defer.TimeoutError, defer.CancelledError))
