# -*- test-case-name: tests.test_logwriter -*-
"""
The batching writer: request records go to PostgreSQL in batches, never on
the response path, and nothing a user paid for is lost on the way.

Each record is made storable (L{majordomo.ledger.storable.row}: no value in it can
make PostgreSQL refuse it) and journaled to the spool (L{majordomo.ledger.spool})
when it is added, before the client sees the end of its response.  Records are grouped into
batches of C{batch_size}, or whatever arrived within C{flush_interval}; each
batch is one spool segment and ONE statement (L{majordomo.ledger.statement}):
the rows go in through C{jsonb_populate_recordset} (txpostgres cannot COPY or
executemany) with C{ON CONFLICT (id) DO NOTHING}, and the same statement adds
the inserted rows to the key counters, the metadata registry and the budget
windows, so a batch written twice changes nothing the second time.  Once
committed, the segment is deleted.

While PostgreSQL is away, batches wait, in order; at most C{memory_limit}
records are held in memory, the rest only on disk (read back in a thread when
their turn comes).  A batch PostgreSQL refuses for its content is written row
by row, so one bad record cannot block the others; a row it still refuses is
written again reduced to the gateway's own facts (L{majordomo.ledger.storable.reduced_row}),
so the request keeps its row and its count, and only a row refused even so
goes to C{rejected.jsonl} in the spool directory.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from majordomo.db import Database, is_unavailable
from majordomo.ledger import storable
from majordomo.ledger.spool import Segment, Spool, SpoolError, read_segment
from majordomo.ledger.statement import INSERT_BATCH

log = Logger()


class RecordSink(Protocol):
    """
    Where the proxy hands each finished request's record.  C{add} is called
    on the reactor thread and must return at once; the running sink,
    L{LogWriter}, has journaled the record by then, so the proxy can end the
    response right after.
    """

    def add(self, record: dict[str, Any]) -> None:
        """Take one request's record."""
        ...


SegmentReader = Callable[[Segment], defer.Deferred[list[str]]]
"""Reads a spooled segment back without blocking the reactor (L{read_segment})."""


def reader_in(pool: ThreadPool, reactor: IReactorFromThreads) -> SegmentReader:
    """Segments read in C{pool}'s threads, never the reactor's own pool (which resolves DNS)."""

    def read(segment: Segment) -> defer.Deferred[list[str]]:
        return deferToThreadPool(reactor, pool, read_segment, segment)

    return read


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact: PostgreSQL parses the string into NUMERIC
    return str(value)


def encode_record(record: dict[str, Any]) -> str:
    """One record as the JSON text the spool and the INSERT both use."""
    return json.dumps(record, default=_json_default, separators=(",", ":"))


@dataclass
class _Batch:
    """Records written together; C{records} is None while they are only on disk."""

    segment: Segment | None
    records: list[str] | None
    count: int


class LogWriter(service.Service):
    """
    Journals records and writes them to PostgreSQL in batches.  The spool
    is opened and closed by its owner (the service tree), not here; C{read}
    brings back the segments held only on disk.
    """

    def __init__(
        self,
        db: Database,
        spool: Spool,
        read: SegmentReader,
        batch_size: int,
        flush_interval: float,
        memory_limit: int = 10000,
        clock: Any = None,
        observe_batch: Callable[[float, bool], None] | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._db = db
        self._spool = spool
        self._read = read
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._memory_limit = memory_limit
        self._clock = clock
        self._observe_batch = observe_batch or (lambda seconds, ok: None)
        self._current: list[str] = []
        self._batches: deque[_Batch] = deque()
        self._in_memory = 0
        self._writing: defer.Deferred[None] | None = None
        self._loop: task.LoopingCall | None = None
        self._warned_unavailable = False
        self.rows_written = 0
        self.spool_failures = 0
        self.records_dropped = 0
        self.spool_ok = True

    @property
    def queued(self) -> int:
        """Records not yet committed (in memory or only on disk)."""
        return len(self._current) + sum(batch.count for batch in self._batches)

    def replay(self, segments: list[Segment]) -> None:
        """Queue segments left by an earlier run (read from disk when their turn comes)."""
        for segment in segments:
            self._batches.append(_Batch(segment, None, segment.records))

    def add(self, record: dict[str, Any]) -> None:
        """
        Journal one request's record, made storable, and queue it; a full
        batch is written at once.
        """
        line = encode_record(storable.row(record))
        try:
            self._spool.append(line.encode("utf-8") + b"\n")
            self.spool_ok = True
        except SpoolError as e:
            self.spool_failures += 1
            if self.spool_ok or self.spool_failures % 1000 == 1:
                log.error(
                    "Request records cannot be journaled ({error}); keeping them in memory", error=e
                )
            self.spool_ok = False
            if self._in_memory + len(self._current) >= 2 * self._memory_limit:
                self.records_dropped += 1
                log.critical("Dropped a request record: the spool and the memory queue are full")
                return
        self._current.append(line)
        if len(self._current) >= self._batch_size:
            self._seal()
            self._write_next()

    def _seal(self) -> None:
        """Close the batch being filled and queue it."""
        if not self._current:
            return
        records, self._current = self._current, []
        segment = self._spool.seal()
        # A batch only partly journaled (spool full) must stay in memory whole;
        # its segment is still removed once the batch commits.
        partly = segment is None or segment.records != len(records)
        if not partly and self._in_memory + len(records) > self._memory_limit:
            self._batches.append(_Batch(segment, None, len(records)))
            return
        self._in_memory += len(records)
        self._batches.append(_Batch(segment, records, len(records)))

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._flush_interval, now=False)

    def stopService(self) -> defer.Deferred[None]:
        """Stop the timer and write what PostgreSQL takes now; the rest stays in the spool."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.flush(give_up_when_unavailable=True)

    def _tick(self) -> None:
        # A LoopingCall whose function raises stops for good: never raise here.
        self._seal()
        self._write_next()

    def flush(self, give_up_when_unavailable: bool = False) -> defer.Deferred[None]:
        """
        Write every queued record; fires when they are all committed (or,
        with C{give_up_when_unavailable}, when PostgreSQL cannot be reached:
        the records are safe in the spool).
        """
        return defer.Deferred.fromCoroutine(self._flush(give_up_when_unavailable))

    async def _flush(self, give_up_when_unavailable: bool) -> None:
        self._seal()
        while self._batches or self._writing is not None:
            writing = self._write_next()
            written = self.rows_written
            await writing
            if self.rows_written == written and self._batches:
                if give_up_when_unavailable:
                    return
                await task.deferLater(self._clock, self._flush_interval, lambda: None)

    def _write_next(self) -> defer.Deferred[None]:
        if self._writing is None and self._batches:
            self._writing = defer.Deferred.fromCoroutine(self._write(self._batches[0]))
            self._writing.addBoth(self._written)
        return self._writing or defer.succeed(None)

    def _written(self, result: object) -> None:
        self._writing = None

    async def _write(self, batch: _Batch) -> None:
        records = batch.records
        if records is None:
            assert batch.segment is not None
            records = await self._read(batch.segment)
        started = self._clock.seconds()
        try:
            await self._db.run_operation(INSERT_BATCH, (_array(records),))
        except Exception as e:
            self._observe_batch(self._clock.seconds() - started, False)
            if is_unavailable(e):
                self._unavailable()
                return
            log.error("PostgreSQL refused a batch ({error}); writing it row by row", error=e)
            await self._write_one_by_one(records)
        else:
            self._observe_batch(self._clock.seconds() - started, True)
        self._done(batch)

    def _done(self, batch: _Batch) -> None:
        self._batches.popleft()
        if batch.records is not None:
            self._in_memory -= batch.count
        if batch.segment is not None:
            self._spool.remove(batch.segment)
        self.rows_written += batch.count
        if self._warned_unavailable:
            log.info("PostgreSQL is back; writing the queued request records")
            self._warned_unavailable = False

    def _unavailable(self) -> None:
        if not self._warned_unavailable:
            log.warn(
                "PostgreSQL unavailable; {queued} request records wait in the spool",
                queued=self.queued,
            )
            self._warned_unavailable = True

    async def _write_one_by_one(self, records: list[str]) -> None:
        for record in records:
            try:
                await self._db.run_operation(INSERT_BATCH, (_array([record]),))
            except Exception as e:
                if is_unavailable(e):
                    raise
                await self._write_reduced(record, e)

    async def _write_reduced(self, record: str, refused: Exception) -> None:
        """Store a refused record as its reduced row; if that is refused too, reject it."""
        reason = (
            f"Row stored reduced: PostgreSQL refused the whole row ({storable.refusal(refused)}); "
            "only the gateway's own facts are kept"
        )
        reduced = storable.reduced_row(json.loads(record), reason)
        if reduced is None:
            self._reject(record, str(refused))
            return
        try:
            await self._db.run_operation(INSERT_BATCH, (_array([encode_record(reduced)]),))
        except Exception as e:
            if is_unavailable(e):
                raise
            self._reject(record, f"{refused}; reduced, it was refused too: {e}")
            return
        log.error(
            "PostgreSQL refused request record {id} ({error}); stored it reduced",
            id=reduced["id"],
            error=refused,
        )

    def _reject(self, record: str, error: str) -> None:
        """Keep a record PostgreSQL will not take, with the reason, for a human to look at."""
        path = os.path.join(self._spool.directory, "rejected.jsonl")
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"error": error, "record": json.loads(record)}) + "\n")
        log.error(
            "A request record was refused by PostgreSQL and kept in {path}: {error}",
            path=path,
            error=error,
        )


def _array(records: list[str]) -> str:
    return "[" + ",".join(records) + "]"
