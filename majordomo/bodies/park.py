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
    The disk side of L{majordomo.bodies.s3.S3BodyStore}, which hands it the
    bodies S3 did not take (L{park}).  Each is written to C{parked} by the
    disk thread (C{disk_pool}) and its file joins C{on_disk}, the store's
    retry order.  A body the disk refuses is I{stranded}: kept here in
    memory, counted against the store's memory budget by C{hold}, until the
    store takes it back (L{take_stranded}).

    Before L{start} (the disk thread is not running yet) every body is
    stranded; after L{close}, a body the disk refuses is lost.
    """

    def __init__(
        self,
        reactor: Any,
        tuning: UploadTuning,
        disk_pool: ThreadPool,
        parked: ParkedBodies,
        on_disk: ParkedRounds,
        hold: Callable[[Body], None],
    ) -> None:
        self._reactor = reactor
        self._tuning = tuning
        self._disk_pool = disk_pool
        self._parked = parked
        self._on_disk = on_disk
        self._hold = hold
        self._writes = DeferWaiter()  # bodies being written by the disk thread
        self._stranded: list[Body] = []  # refused by S3 and by the disk
        self._started = self._closed = False
        self._last_error = float("-inf")
        self.parked = 0  # bodies written to disk (cumulative)
        self.dropped = 0  # bodies lost here, each logged

    @property
    def writing(self) -> int:
        """Bodies handed to the disk thread and not yet written."""
        return self._writes.count

    @property
    def stranded(self) -> int:
        """Bodies refused by the disk too, held in memory."""
        return len(self._stranded)

    def start(self) -> None:
        """The disk thread runs: from now on bodies go to disk."""
        self._started = True

    def close(self) -> int:
        """
        Stop keeping bodies: one the disk refuses from now on is lost.
        Return how many are lost now: those stranded and those not yet written.
        """
        self._closed = True
        return len(self._stranded) + self.writing

    def park(self, body: Body) -> None:
        """Hand a body to the disk thread (it leaves the store's memory budget)."""
        if not self._started:
            self._strand(body)
            return
        body.parked = True
        write = defer.Deferred.fromCoroutine(self._write_to_disk(body))
        self._writes.add(write.addErrback(self._bug))

    def take_stranded(self) -> list[Body]:
        """The bodies held in memory, which leave this side (still counted as held)."""
        taken, self._stranded = self._stranded, []
        return taken

    def written(self) -> defer.Deferred[None]:
        """Fires once no body is being written (cancelling it stops only the wait)."""
        return self._writes.wait()

    async def _write_to_disk(self, body: Body) -> None:
        """Park one body by the disk thread, and what follows from it."""
        try:
            path = await deferToThreadPool(self._reactor, self._disk_pool, self._write, body)
        except Exception:
            self._write_failed(Failure(), body)
        else:
            self.parked += 1
            self._on_disk.add(path)

    def _write(self, body: Body) -> str:
        """Write one body to disk (in the disk thread)."""
        data = body.data
        if data is None:
            assert body.exchange is not None
            data = encode_document(body.exchange)
        return self._parked.write(body.key, data)

    def _write_failed(self, failure: Failure, body: Body) -> None:
        if self._closed:
            return
        body.parked = False
        if not failure.check(OSError):
            self.dropped += 1
            log.failure("The bodies of a request cannot be encoded; they are lost", failure)
            return
        now = self._reactor.seconds()
        if now - self._last_error >= WARN_EVERY:
            self._last_error = now
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
        log.failure("Unexpected error while parking a request body", failure)
