# -*- test-case-name: tests.test_bodies -*-
"""
S3 body storage: each request's bodies become one gzip JSON object at the
key its row carries, and no body is lost on the way.

The path of one body:

 1. L{S3BodyStore.store} names the object (the row carries the key at once)
    and queues the body in memory, unless memory already holds
    C{memory_items} bodies or C{memory_bytes} of them: then the body goes
    straight to disk (step 3).
 2. An upload thread (a pool of C{s3.upload_threads}, never the
    reactor's own pool, which also resolves DNS: L{majordomo.bodies.threads})
    builds the gzip JSON and PUTs it (L{majordomo.bodies.s3client}).  A
    failed attempt is retried after a reactor timer (0.5 s, 1 s, 2 s by
    default); the thread is free meanwhile.
 3. A body still not uploaded is I{parked}: written, by a disk thread, to
    C{spool_dir/bodies/<owner>/<n>.body} (its key, then the gzip bytes;
    L{majordomo.bodies.park}, L{majordomo.bodies.parking}).
 4. Every C{retry_interval}, and as soon as any upload succeeds again,
    parked bodies are uploaded one by one (a failure ends that round) and
    each file is deleted once S3 has its object (L{majordomo.bodies.rounds}).

Parked bodies outlive the process: as in the record spool
(L{majordomo.ledger.spool}), each process owns a directory under an exclusive
C{flock} and adopts those of dead processes when it starts.  They take at
most C{disk_bytes} (by default the record spool's own limit), so they never
crowd out the request records.  When the disk refuses a body too, up to
C{memory_items} such bodies wait in memory for the next retry; past that a
body is dropped, counted and logged as critical, never silently.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from majordomo.bodies.document import Exchange, encode_document, object_key
from majordomo.bodies.park import Parking
from majordomo.bodies.parking import CorruptParkedBody, ParkedBodies
from majordomo.bodies.rounds import ParkedRounds
from majordomo.bodies.s3client import SharedClient, make_client, put_body
from majordomo.bodies.threads import daemon_pool, stop_pool
from majordomo.bodies.tuning import WARN_EVERY, Body, UploadTuning, describe
from majordomo.config import S3Config
from majordomo.inflight import DeferWaiter, bounded

log = Logger()


class S3BodyStore(service.Service):
    """
    Uploads each request's bodies to S3 from threads of its own (see the module
    docstring), parking on C{parked} (by default under C{spool_dir/bodies}) and
    uploading with C{client} (by default a boto3 client made from C{config}).
    """

    def __init__(
        self,
        config: S3Config,
        spool_dir: str,
        reactor: Any = None,
        tuning: UploadTuning | None = None,
        parked: ParkedBodies | None = None,
        client: SharedClient | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._config = config
        self._tuning = tuning or UploadTuning()
        self._pool = daemon_pool(config.upload_threads, "majordomo-s3")
        self._disk_pool = daemon_pool(1, "majordomo-bodies-disk")
        self._parked = parked or ParkedBodies(
            os.path.join(spool_dir, "bodies"), self._tuning.disk_bytes
        )
        self._client = client or SharedClient(self._make_client)
        self._ready: deque[Body] = deque()  # in memory, waiting for a thread
        self._waiting: dict[Body, IDelayedCall] = {}  # in memory, backing off
        self._in_flight: set[Body] = set()
        self._uploads = DeferWaiter()  # upload attempts in the upload threads
        self._held_items = 0  # bodies above, and those stranded by the parking
        self._held_bytes = 0
        self._on_disk = ParkedRounds()  # parked files, in retry order
        self._parking = Parking(
            reactor, self._tuning, self._disk_pool, self._parked, self._on_disk, self._hold
        )
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor
        self._started = self._running = self._stopping = self._closed = False
        self._failing = False
        self._last_warning = float("-inf")
        self._unwarned = 0
        self._dropped = 0  # bodies lost on the upload side
        self.failures = 0  # upload attempts that failed
        self.uploaded = 0  # objects now in S3
        if bool(config.access_key_id) != bool(config.secret_access_key):
            log.warn(
                "Only one of s3.access_key_id and s3.secret_access_key is set; "
                "using the AWS default credential chain"
            )

    @property
    def pending(self) -> int:
        """Bodies not yet in S3: in memory or parked on disk."""
        return self._held_items + self._parking.writing + len(self._on_disk)

    @property
    def parked(self) -> int:
        """Bodies written to disk (cumulative)."""
        return self._parking.parked

    @property
    def dropped(self) -> int:
        """Bodies lost, each logged as critical."""
        return self._dropped + self._parking.dropped

    @property
    def in_memory(self) -> int:
        """Bodies held in memory for upload (at most memory_items, unless the disk fails)."""
        return self._held_items

    @property
    def on_disk(self) -> int:
        """Bodies parked on local disk, waiting for S3."""
        return len(self._on_disk)

    def store(self, exchange: Exchange) -> dict[str, Any]:
        """Queue the upload of one request's bodies; the row gets the object's key now."""
        key = object_key(exchange)
        if self._closed:
            self._dropped += 1
            log.critical("Request bodies arrived after S3 storage stopped; {key} is lost", key=key)
            return {}
        body = Body(key, exchange, len(exchange.request_body) + len(exchange.response_body))
        if (
            self._stopping
            or self._held_items >= self._tuning.memory_items
            or self._held_bytes + body.size > self._tuning.memory_bytes
        ):
            self._parking.park(body)
        else:
            self._hold(body)
            self._ready.append(body)
            self._pump()
        return {"s3_key": key}

    def startService(self) -> defer.Deferred[None]:
        """
        Start the threads and queue the bodies earlier runs left on disk.
        Fails if the bodies directory cannot be used.
        """
        super().startService()
        if self._started:
            return defer.succeed(None)
        self._started = self._running = True
        self._pool.start()
        self._disk_pool.start()
        self._parking.start()
        self._ready.extend(self._parking.take_stranded())  # bodies stored before start
        self._loop.start(self._tuning.retry_interval, now=False).addErrback(self._bug)
        d = deferToThreadPool(self._reactor, self._disk_pool, self._parked.open)
        self._pump()
        return d.addCallback(self._found_on_disk)

    def _found_on_disk(self, paths: list[str]) -> None:
        if paths:
            log.info("{n} request bodies were waiting on disk for S3", n=len(paths))
        for path in paths:
            self._on_disk.add(path)
        self._start_round()

    def stopService(self) -> defer.Deferred[None]:
        """
        Park on disk what is held in memory, give uploads in flight
        C{stop_timeout} to finish (a copy of each unfinished one is parked),
        then stop the threads.  Never waits longer than twice C{stop_timeout}.
        Cancelling the returned Deferred (a caller's own timeout) does not
        cut this short: the threads are still stopped.
        """
        super().stopService()
        stopped: defer.Deferred[None] = defer.Deferred()
        defer.Deferred.fromCoroutine(self._stop()).addErrback(self._bug).chainDeferred(stopped)
        return stopped

    async def _stop(self) -> None:
        if not self._started or self._stopping:
            return
        self._stopping, self._running = True, False
        if self._loop.running:
            self._loop.stop()
        self._on_disk.end()
        for call in self._waiting.values():
            call.cancel()
        held = [*self._waiting, *self._ready, *self._parking.take_stranded()]
        self._waiting.clear()
        self._ready.clear()
        for body in held:
            self._release(body)
            self._parking.park(body)
        timeout = self._tuning.stop_timeout
        # Uploads first: one that fails parks its body, and nothing starts a new upload now.
        await self._settle([self._uploads.wait, self._parking.written], timeout)
        for body in list(self._in_flight):
            if not body.parked:  # the upload may still succeed: then S3 gets it twice
                self._parking.park(body)
        await self._settle([self._parking.written], timeout)
        self._closed = True
        lost = self._parking.close()
        if lost:
            self._dropped += lost
            log.critical("{n} request bodies could not be kept for S3 at shutdown", n=lost)
        writing = self._parking.writing > 0
        if not writing:
            try:
                await deferToThreadPool(self._reactor, self._disk_pool, self._parked.close)
            except Exception:
                log.failure("Could not release the directory of parked bodies")
        uploading = bool(self._in_flight or self._on_disk.uploading)
        if not uploading:
            await deferToThreadPool(self._reactor, self._pool, self._client.close)
        stop_pool(self._disk_pool, busy=writing)
        stop_pool(self._pool, busy=uploading)
        if self._on_disk:
            log.info("{n} request bodies wait on disk for S3 until the next start", n=self.on_disk)

    async def _settle(self, work: list[Callable[[], defer.Deferred[None]]], timeout: float) -> None:
        """Wait, at most C{timeout} seconds in all, until each of C{work} is idle in turn."""
        deadline = self._reactor.seconds() + timeout
        for idle in work:
            left = deadline - self._reactor.seconds()
            await bounded(idle(), max(left, 0.0), self._reactor)

    # Memory accounting: only what the upload side holds counts against the budget.

    def _hold(self, body: Body) -> None:
        self._held_items += 1
        self._held_bytes += body.size

    def _release(self, body: Body) -> None:
        self._held_items -= 1
        self._held_bytes -= body.size

    # Uploads.

    def _pump(self) -> None:
        """Give free upload threads work: bodies in memory first, then parked ones."""
        busy = len(self._in_flight) + self._on_disk.uploading
        while self._running and busy < self._config.upload_threads:
            if self._ready:
                self._track(self._upload_body(self._ready.popleft()))
            elif (path := self._on_disk.take()) is not None:
                self._track(self._upload_parked(path))
            else:
                return
            busy += 1

    def _track(self, upload: Coroutine[Any, Any, None]) -> None:
        """Run an upload; stopping waits for it, and a bug in it is logged."""
        self._uploads.add(defer.Deferred.fromCoroutine(upload).addErrback(self._bug))

    async def _upload_body(self, body: Body) -> None:
        """One upload attempt of a body held in memory, and what follows from it."""
        self._in_flight.add(body)
        body.attempts += 1
        try:
            await deferToThreadPool(self._reactor, self._pool, self._attempt, body)
        except Exception:
            self._body_failed(Failure(), body)
        else:
            self._body_uploaded(body)

    def _attempt(self, body: Body) -> None:
        """One upload attempt (in an upload thread)."""
        if body.data is None:
            assert body.exchange is not None
            body.data = encode_document(body.exchange)
        put_body(self._client.get(), self._config.bucket, body.key, body.data)

    def _body_uploaded(self, body: Body) -> None:
        self._in_flight.discard(body)
        if self._closed:
            return
        self._release(body)
        self._succeeded()

    def _body_failed(self, failure: Failure, body: Body) -> None:
        self._in_flight.discard(body)
        if self._closed:
            return
        if body.data is not None:
            body.exchange = None  # retries reuse the built object
        self._attempt_failed(failure)
        if self._running and body.attempts < self._tuning.attempts:
            delay = self._tuning.backoff * 2 ** (body.attempts - 1)
            self._waiting[body] = self._reactor.callLater(delay, self._retry, body)
        else:
            self._release(body)
            if not body.parked:
                self._parking.park(body)
        self._pump()

    def _retry(self, body: Body) -> None:
        del self._waiting[body]
        self._ready.append(body)
        self._pump()

    async def _upload_parked(self, path: str) -> None:
        """One upload attempt of a parked body (L{ParkedRounds.take} marked it uploading)."""
        try:
            await deferToThreadPool(self._reactor, self._pool, self._attempt_parked, path)
        except Exception:
            self._parked_failed(Failure(), path)
        else:
            self._parked_uploaded(path)

    def _attempt_parked(self, path: str) -> None:
        """Upload one parked body and delete its file (in an upload thread)."""
        key, data = self._parked.read(path)
        put_body(self._client.get(), self._config.bucket, key, data)
        self._parked.remove(path)

    def _parked_uploaded(self, path: str) -> None:
        self._on_disk.finished(path)
        if self._closed:
            return
        self._on_disk.remove(path)
        self._succeeded()

    def _parked_failed(self, failure: Failure, path: str) -> None:
        self._on_disk.finished(path)
        if self._closed:
            return
        if failure.check(CorruptParkedBody, FileNotFoundError):
            self._on_disk.remove(path)
            self._dropped += 1
            log.critical("A parked request body cannot be uploaded: {error}", error=failure.value)
        else:
            self._attempt_failed(failure)
            self._on_disk.to_back(path)  # so one bad body cannot block the rest
            self._on_disk.end()  # S3 is probably down: wait for the next round
        self._pump()

    def _succeeded(self) -> None:
        self.uploaded += 1
        if self._failing:
            self._failing = False
            log.info("S3 uploads work again; {n} more parked bodies follow", n=self.on_disk)
        self._start_round()
        self._pump()

    def _attempt_failed(self, failure: Failure) -> None:
        """Count a failed attempt; warn about it at most once a minute (never with a body)."""
        self.failures += 1
        self._failing = True
        now = self._reactor.seconds()
        if now - self._last_warning < WARN_EVERY:
            self._unwarned += 1
            return
        log.warn(
            "S3 upload failed ({error}); {pending} request bodies pending, {on_disk} of them "
            "on disk ({unwarned} failures since the last warning not logged)",
            error=describe(failure.value),
            unwarned=self._unwarned,
            pending=self.pending,
            on_disk=self.on_disk,
        )
        self._last_warning, self._unwarned = now, 0

    def _make_client(self) -> Any:
        """The one boto3 client (thread-safe once made); made in an upload thread."""
        return make_client(self._config, self._tuning.connect_timeout, self._tuning.read_timeout)

    def _tick(self) -> None:
        """Every retry_interval: try parked and stranded bodies again.  Never raises."""
        try:
            for body in self._parking.take_stranded():
                body.attempts = max(0, self._tuning.attempts - 1)  # one try, then park again
                self._ready.append(body)
            self._start_round()
            self._pump()
        except Exception:
            log.failure("Retrying parked request bodies failed; trying again later")

    def _start_round(self) -> None:
        if self._running and self._on_disk.start():
            self._pump()

    def _bug(self, failure: Failure) -> None:
        log.failure("Unexpected error in S3 body storage", failure)
