# -*- test-case-name: tests.test_db -*-
"""
PostgreSQL access for the reactor thread: a small pool of txpostgres
connections that survives PostgreSQL restarts.

A plain C{txpostgres.ConnectionPool} never recovers once the server restarts
(docs/ARCHITECTURE.md, "Known traps"), so every connection here carries its own
C{DeadConnectionDetector}, which reconnects it in the background, and queries
go to a connection that is believed alive.  L{Database.run_query} and friends
retry idempotent work for a bounded time while PostgreSQL is away.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres

from majordomo.config import PostgresConfig

log = Logger()

T = TypeVar("T")

# Failures that mean "the database is not reachable right now", as opposed to
# "this statement is wrong".  Only these are retried.
_UNAVAILABLE = (
    reconnection.ConnectionDead,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
    txpostgres.RollbackFailed,
)


class DatabaseUnavailable(Exception):
    """PostgreSQL did not answer within the allowed time."""


def reconnection_delays() -> Any:
    """Reconnect quickly first (a restart takes about a second), then back off."""
    return iter(itertools.chain([0.1, 0.25, 0.5], itertools.repeat(1.0)))


class Detector(reconnection.DeadConnectionDetector):
    """
    txpostgres' detector, plus a way to stop reconnecting when we close: the
    stock one keeps retrying forever and cannot be told to give up.
    """

    _reconnecting: defer.Deferred[Any] | None = None

    def startReconnecting(self, f: Failure) -> None:
        call = retrying.RetryingCall(self.reconnect)
        call.reactor = self.reactor
        d = self._reconnecting = call.start(self.reconnectionIterator())
        d.addCallback(lambda _: self.connectionRecovered())
        d.addErrback(self._reconnect_failed)

    @staticmethod
    def _reconnect_failed(failure: Failure) -> None:
        if not failure.check(defer.CancelledError):
            log.failure("Reconnecting to PostgreSQL failed", failure)

    def stop(self) -> None:
        """Give up reconnecting (the connection is being closed for good)."""
        self.connectionIsDead = True
        reconnecting, self._reconnecting = self._reconnecting, None
        if reconnecting is not None and not reconnecting.called:
            # A connect in progress may refuse to be cancelled until its poll
            # cycle finishes; the connection is closed right after anyway.
            with contextlib.suppress(Exception):
                reconnecting.cancel()


class Connection(txpostgres.Connection):
    """
    A txpostgres connection that treats the server hanging up on an idle
    connection (restart, C{pg_terminate_backend}) as a lost connection, so its
    detector reconnects; stock txpostgres lets the error escape to the
    reactor as an "Unhandled Error".
    """

    def doRead(self) -> None:
        try:
            super().doRead()
        except (psycopg2.Error, ValueError):  # ValueError: the socket is already gone (fd -1)
            self.reactor.removeWriter(self)
            self.connectionLost(Failure())


class Database:
    """
    A pool of txpostgres connections with reconnection and bounded retries.

    Each public method returns a Deferred; nothing here blocks the reactor.
    """

    def __init__(
        self,
        config: PostgresConfig,
        reactor: Any = None,
        database: str | None = None,
        pool_size: int | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._reactor = reactor
        self._params = config.dsn_parameters(database)
        size = pool_size or config.pool_size
        self._connections = [self._new_connection() for _ in range(size)]
        self._next = itertools.cycle(range(len(self._connections)))
        self._ready: set[txpostgres.Connection] = set()  # connected at least once
        self._waiting: list[defer.Deferred[None]] = []
        self._closed = False

    def _new_connection(self) -> txpostgres.Connection:
        detector = Detector(reconnectionIterator=reconnection_delays, reactor=self._reactor)
        connection = Connection(reactor=self._reactor, detector=detector)
        detector.addRecoveryHandler(lambda: self._on_recovered(connection))
        return connection

    @property
    def available(self) -> bool:
        """True when at least one connection is believed alive."""
        return any(self._alive(c) for c in self._connections)

    def _alive(self, connection: txpostgres.Connection) -> bool:
        return (
            connection in self._ready
            and not connection.closed
            and not connection.detector.connectionIsDead
        )

    def start(self) -> defer.Deferred[None]:
        """
        Open every connection.  Connections that fail (PostgreSQL is down) keep
        retrying in the background; the Deferred fires once one is up.
        """
        for connection in self._connections:
            d = connection.connect(**self._params)
            d.addCallbacks(self._on_connected, connection.detector.checkForDeadConnection)
            d.addErrback(lambda f: None)  # the detector now reconnects it
        return self.when_connected()

    def connect_once(self) -> defer.Deferred[None]:
        """
        Open every connection now or fail with PostgreSQL's own error (for
        commands, which should say why rather than wait).
        """
        return defer.Deferred.fromCoroutine(self._connect_each())

    async def _connect_each(self) -> None:
        for connection in self._connections:
            await connection.connect(**self._params)
            self._ready.add(connection)

    def raw_connection(self) -> Any:
        """A psycopg2 connection, for quoting identifiers (C{sql.Identifier})."""
        return self._connections[0]._connection

    def when_connected(self) -> defer.Deferred[None]:
        """A Deferred that fires as soon as one connection is usable."""
        if self.available:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(waiter)
        return waiter

    def _on_connected(self, connection: txpostgres.Connection) -> None:
        self._ready.add(connection)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    def _on_recovered(self, connection: txpostgres.Connection) -> None:
        if not self.available:
            log.info("Reconnected to PostgreSQL")
        self._on_connected(connection)

    def close(self) -> None:
        """Close every connection and stop reconnecting."""
        self._closed = True
        for connection in self._connections:
            connection.detector.stop()
            connection.close()

    def _pick(self) -> txpostgres.Connection:
        for _ in range(len(self._connections)):
            connection = self._connections[next(self._next)]
            if self._alive(connection):
                return connection
        raise reconnection.ConnectionDead()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        try:
            connection = self._pick()
        except reconnection.ConnectionDead:
            return defer.fail()
        result: defer.Deferred[Any] = getattr(connection, method)(*args, **kwargs)
        return result

    def run_query(
        self, sql: str, params: Any = None, retry_for: float = 0.0
    ) -> defer.Deferred[Any]:
        """Run a statement and return its rows; retried for C{retry_for} seconds."""
        return defer.Deferred.fromCoroutine(
            self._retrying(retry_for, self._call, "runQuery", sql, params)
        )

    def run_operation(
        self, sql: str, params: Any = None, retry_for: float = 0.0
    ) -> defer.Deferred[None]:
        """Run a statement and discard its result; retried for C{retry_for} seconds."""
        return defer.Deferred.fromCoroutine(
            self._retrying(retry_for, self._call, "runOperation", sql, params)
        )

    def run_interaction(
        self, interaction: Callable[..., Any], *args: Any, retry_for: float = 0.0
    ) -> defer.Deferred[Any]:
        """Run C{interaction(cursor, *args)} in one transaction."""
        return defer.Deferred.fromCoroutine(
            self._retrying(retry_for, self._call, "runInteraction", interaction, *args)
        )

    async def _retrying(
        self, retry_for: float, call: Callable[..., defer.Deferred[T]], *args: Any
    ) -> T:
        deadline = self._reactor.seconds() + retry_for
        delay = 0.05
        while True:
            try:
                return await call(*args)
            except _UNAVAILABLE:
                if self._closed or self._reactor.seconds() + delay > deadline:
                    if retry_for:
                        raise DatabaseUnavailable("PostgreSQL is not reachable") from None
                    raise
                await task.deferLater(self._reactor, delay, lambda: None)
                delay = min(delay * 2, 1.0)


def is_unavailable(error: BaseException | Failure) -> bool:
    """True if C{error} means PostgreSQL could not be reached (not that it refused)."""
    if isinstance(error, Failure):
        return error.check(DatabaseUnavailable, *_UNAVAILABLE) is not None
    return isinstance(error, (DatabaseUnavailable, *_UNAVAILABLE))
