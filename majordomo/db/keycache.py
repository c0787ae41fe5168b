# -*- test-case-name: tests.test_keycache -*-
"""
The gateway's in-memory API key cache, kept honest by PostgreSQL
C{LISTEN/NOTIFY}: C{majordomo keys revoke} NOTIFYs L{KEYS_CHANNEL} with the
key's id and every running gateway drops that key at once.

The cache is only as good as the LISTEN connection behind it: while that
connection is not known to be listening (not yet connected, lost, coming
back) NOTIFYs may be missed, so every lookup goes to the database.  When it is
listening again the cache starts empty: rebuilt, not trusted.

Other caches kept honest by the same channel (proxy keys) do not open a
listener of their own: they observe this one (L{KeyCache.observe}).
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from majordomo.config import PostgresConfig
from majordomo.db import Connection, Database, Detector, reconnection_delays
from majordomo.db.keys import KEYS_CHANNEL, ActiveKey, KeyStore

log = Logger()

# Shows which backend is the listener in pg_stat_activity.
LISTENER_APPLICATION_NAME = "majordomo-key-listener"


class _ListenDetector(Detector):
    """The pool's detector, which also says when the connection is found dead."""

    def __init__(self, on_dead: Callable[[Failure], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_dead = on_dead

    def startReconnecting(self, f: Failure) -> None:
        self._on_dead(f)
        super().startReconnecting(f)


class KeyCache(service.Service):
    """
    Answers "which active key has this hash?" from memory when it safely can,
    from PostgreSQL otherwise.  Only hits are cached (random keys sprayed at
    the gateway must not grow memory), at most C{max_entries}, least recently
    used first out.  Lookups work whether or not the service is running: a
    cache that is not listening sends every one to PostgreSQL.
    """

    def __init__(
        self,
        db: Database,
        postgres_config: PostgresConfig,
        reactor: Any = None,
        *,
        max_entries: int = 100_000,
        probe_interval: float = 5.0,
        reconnection_delays: Callable[[], Iterator[float]] = reconnection_delays,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self._store = KeyStore(db)
        self._params = postgres_config.dsn_parameters()
        self._params["application_name"] = LISTENER_APPLICATION_NAME
        self._max_entries = max_entries
        self._ids: OrderedDict[str, ActiveKey] = OrderedDict()  # key hash -> key, LRU first
        self._hashes: dict[str, str] = {}  # str(key id) -> key hash
        # Bumped by every NOTIFY and every change of trust: a lookup that
        # raced one of them is answered but not cached.
        self._generation = 0
        self._epoch = 0  # bumped whenever the listener is lost
        self._detector = _ListenDetector(
            self._lost, reconnectionIterator=reconnection_delays, reactor=reactor
        )
        self._detector.addRecoveryHandler(self._connected)
        self._connection = Connection(reactor=reactor, detector=self._detector)
        self._connection.addNotifyObserver(self._notified)
        self._probe_loop = task.LoopingCall(self._probe)
        self._probe_loop.clock = reactor
        self._probe_interval = probe_interval
        self._pending: defer.Deferred[Any] | None = None  # statement on the listener
        self._up = False  # the listener is connected
        self._listening = False  # ... and LISTEN is in place: the cache may be used
        self._has_listened = False
        self._stopped = False
        self._waiting: list[defer.Deferred[None]] = []
        self._observers: list[Callable[[str | None], None]] = []

    def observe(self, observer: Callable[[str | None], None]) -> None:
        """
        Tell C{observer} what this cache hears: the id a NOTIFY names, or
        None whenever everything cached must be forgotten (a NOTIFY naming no
        id, the listener lost, LISTEN in place again, the cache stopped).
        An observer caches only while L{trusted}; it must not raise.
        """
        self._observers.append(observer)

    def _tell(self, key_id: str | None) -> None:
        for observer in self._observers:
            observer(key_id)

    @property
    def trusted(self) -> bool:
        """True while revocations are heard, so cached answers are current."""
        return self._listening

    @property
    def size(self) -> int:
        """How many keys are cached."""
        return len(self._ids)

    def authenticate(self, key_hash: str) -> defer.Deferred[Any]:
        """The L{ActiveKey} with this hash, or None (as L{KeyStore.find_active})."""
        if self._listening:
            key_id = self._ids.get(key_hash)
            if key_id is not None:
                self._ids.move_to_end(key_hash)
                return defer.succeed(key_id)
        generation = self._generation if self._listening else None
        d = self._store.find_active(key_hash)
        d.addCallback(self._learned, key_hash, generation)
        return d

    def _learned(self, key: ActiveKey | None, key_hash: str, generation: int | None) -> Any:
        if key is not None and self._listening and generation == self._generation:
            self._ids[key_hash] = key
            self._hashes[key.id] = key_hash
            while len(self._ids) > self._max_entries:
                _, evicted = self._ids.popitem(last=False)
                self._hashes.pop(evicted.id, None)
        return key

    def _forget_all(self) -> None:
        self._generation += 1
        self._ids.clear()
        self._hashes.clear()
        self._tell(None)

    def _notified(self, notify: Any) -> None:
        if notify.channel != KEYS_CHANNEL:
            return
        self._generation += 1
        try:
            key_id = str(uuid.UUID(notify.payload.strip()))
        except ValueError:
            # Not a key id (a bare NOTIFY, say): forgetting everything is safe.
            self._forget_all()
            return
        key_hash = self._hashes.pop(key_id, None)
        if key_hash is not None:
            self._ids.pop(key_hash, None)
        self._tell(key_id)

    def startService(self) -> defer.Deferred[None]:
        """
        Open the listener (once per KeyCache).  The returned Deferred fires
        once LISTEN is in place; until then (and whenever the listener is
        lost) every lookup goes to PostgreSQL, so nobody has to wait for it.
        """
        super().startService()
        d = self._connection.connect(**self._params)
        d.addCallbacks(lambda _: self._connected(), self._detector.checkForDeadConnection)
        d.addErrback(self._connect_failed)
        self._probe_loop.start(self._probe_interval, now=False)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(waiter)
        return waiter

    def _connect_failed(self, failure: Failure) -> None:
        if not (self._stopped or self._detector.connectionIsDead):
            # Not a connection problem, so nothing will retry it; lookups
            # keep going to the database.
            log.failure("Cannot open the key revocation listener", failure)

    def _connected(self) -> None:
        """Connected for the first time, or again: LISTEN before trusting anything."""
        if self._stopped:
            return
        self._up = True
        self._listen()

    def _lost(self, failure: Failure) -> None:
        """The detector found the listener dead and is reconnecting it."""
        if self._stopped:
            return
        if self._listening or not self._has_listened:
            log.warn(
                "Key revocation listener is down ({error}); every request is "
                "checked against PostgreSQL until it is back",
                error=failure.getErrorMessage().strip().partition("\n")[0],
            )
        self._epoch += 1
        self._up = self._listening = False
        self._forget_all()

    def _listen(self) -> None:
        epoch = self._epoch
        d = self._run(f"LISTEN {KEYS_CHANNEL}")
        d.addCallback(lambda _: self._listen_confirmed(epoch))
        d.addErrback(self._statement_failed, "LISTEN")

    def _listen_confirmed(self, epoch: int) -> None:
        if self._stopped or not self._up or epoch != self._epoch:
            return  # lost (and perhaps back) meanwhile; that round LISTENs again
        self._forget_all()
        self._listening = True
        if self._has_listened:
            log.info("Key revocation listener is back; the key cache starts empty")
        self._has_listened = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    def _run(self, sql: str) -> defer.Deferred[Any]:
        """Run a statement on the listener, remembering it until it answers."""
        d = self._pending = self._connection.runOperation(sql)

        def done(result: Any) -> Any:
            if self._pending is d:
                self._pending = None
            return result

        return d.addBoth(done)

    def _statement_failed(self, failure: Failure, what: str) -> None:
        # Connection failures already started a reconnection (txpostgres
        # checks every statement's failure); anything else is retried by
        # the next probe.  Either way the failure stops here.
        if not (self._stopped or self._detector.connectionIsDead or not self._up):
            log.failure("{what} on the key revocation listener failed", failure, what=what)

    def _probe(self) -> None:
        """
        Every C{probe_interval}: make sure the listener still answers.  A lost
        socket is noticed at once; this catches one that silently stopped
        answering, and re-issues a LISTEN that failed.  Never raises, or the
        LoopingCall would stop for good.
        """
        try:
            if self._stopped or not self._up:
                return  # not connected: the detector is on it
            if self._pending is not None:
                # The last statement had a whole interval to answer.
                error = psycopg2.OperationalError("the listener stopped answering")
                self._detector.checkForDeadConnection(Failure(error))
            elif not self._listening:
                self._listen()
            else:
                self._run("SELECT 1").addErrback(self._statement_failed, "SELECT 1")
        except Exception:
            log.failure("Checking the key revocation listener failed")

    def stopService(self) -> None:
        """Close the listener for good; afterwards every lookup queries the database."""
        super().stopService()
        self._stopped = True
        self._epoch += 1
        self._up = self._listening = False
        self._forget_all()
        if self._probe_loop.running:
            self._probe_loop.stop()
        self._detector.stop()
        if self._connection.pollable() is not None:
            self._connection.close()
