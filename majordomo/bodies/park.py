# -*- test-case-name: tests.test_bodies -*-
"""
Parking, for the S3 body store (step 3 of L{majordomo.bodies.s3}): a body
not uploaded goes to the disk thread, which writes it under
C{spool_dir/bodies/}; a body the disk refuses too waits in memory, up to
C{memory_items} of them, and past that is dropped, counted and logged as
critical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from majordomo.bodies.document import encode_document
from majordomo.bodies.parking import ParkedBodies
from majordomo.bodies.rounds import ParkedRounds
from majordomo.bodies.tuning import WARN_EVERY, Body, UploadTuning, describe
from majordomo.inflight import DeferWaiter

log = Logger()


class Parking:
    """
    The disk side of L{majordomo.bodies.s3.S3BodyStore}, which it is mixed
    into: it shares the store's state, declared here.
    """

    _reactor: Any
    _tuning: UploadTuning
    _disk_pool: ThreadPool
    _parked: ParkedBodies
    _on_disk: ParkedRounds
    _disk_writes: DeferWaiter
    _stranded: list[Body]
    _started: bool
    _closed: bool
    _parking: int
    _last_park_error: float
    parked: int
    dropped: int
    # Counts a body against the memory budget: the store's accounting.
    _hold: Callable[[Body], None]

    def _park(self, body: Body) -> None:
        """Hand a body to the disk thread (it leaves the memory budget)."""
        if not self._started:
            self._strand(body)
            return
        body.parked = True
        self._parking += 1
        write = defer.Deferred.fromCoroutine(self._write_to_disk(body))
        self._disk_writes.add(write.addErrback(self._bug))

    async def _write_to_disk(self, body: Body) -> None:
        """Park one body by the disk thread, and what follows from it."""
        try:
            path = await deferToThreadPool(self._reactor, self._disk_pool, self._write_parked, body)
        except Exception:
            self._park_failed(Failure(), body)
        else:
            self._body_parked(path)

    def _write_parked(self, body: Body) -> str:
        """Write one body to disk (in the disk thread)."""
        data = body.data
        if data is None:
            assert body.exchange is not None
            data = encode_document(body.exchange)
        return self._parked.write(body.key, data)

    def _body_parked(self, path: str) -> None:
        self._parking -= 1
        self.parked += 1
        self._on_disk.add(path)

    def _park_failed(self, failure: Failure, body: Body) -> None:
        self._parking -= 1
        if self._closed:
            return
        body.parked = False
        if not failure.check(OSError):
            self.dropped += 1
            log.failure("The bodies of a request cannot be encoded; they are lost", failure)
            return
        now = self._reactor.seconds()
        if now - self._last_park_error >= WARN_EVERY:
            self._last_park_error = now
            log.error(
                "Request bodies cannot be parked on disk ({error}); holding them in memory",
                error=describe(failure.value),
            )
        self._strand(body)

    def _strand(self, body: Body) -> None:
        """Keep a body S3 and the disk both refused in memory, if there is room."""
        if len(self._stranded) >= self._tuning.memory_items:
            self.dropped += 1
            log.critical(
                "Request bodies for {key} are lost: S3 and the disk refuse them, memory is full",
                key=body.key,
            )
            return
        self._hold(body)
        self._stranded.append(body)

    def _bug(self, failure: Failure) -> None:
        log.failure("Unexpected error in S3 body storage", failure)
