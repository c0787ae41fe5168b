"""
The batching log writer against a real PostgreSQL: when batches are written,
what a row holds, that a batch written twice changes nothing, and that records
survive PostgreSQL being away (in the writer's queue and in its spool).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import psycopg2
from twisted.internet import defer, reactor, task
from twisted.protocols import portforward
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from majordomo.db import Database
from majordomo.db.keys import hash_key
from majordomo.ids import uuid7
from majordomo.ledger.record import RequestRecord
from majordomo.ledger.spool import Segment, Spool, read_segment
from majordomo.ledger.writer import LogWriter, encode_record, reader_in
from majordomo.pricing.cost import Cost
from majordomo.usage import COMPLETE, ERROR_NOT_BILLED, Usage
from tests import support

# Well in the past, so a created_at equal to it cannot be the insert's now().
ARRIVED = datetime(2025, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)

# gpt-4o-mini: 19 x $0.15/M in + 10 x $0.60/M out.
GPT_4O_MINI_COST = Cost(
    input_cost=Decimal("0.00000285"),
    output_cost=Decimal("0.000006"),
    total_cost=Decimal("0.00000885"),
    pricing_key="gpt-4o-mini",
    pricing_tier="base",
    price_source="bundled",
    priced=True,
)


def started(arrived: datetime, key_id: str) -> RequestRecord:
    """A request as the gateway starts recording it: authenticated, not yet answered."""
    seconds = arrived.timestamp()
    record = RequestRecord.start(
        request_id=uuid7(seconds),
        arrived=seconds,
        key_id=key_id,
        provider="openai",
        method="POST",
        path="/v1/chat/completions",
        model_requested="gpt-4o-mini",
        provider_key_hash=hash_key("sk-test-provider-key"),
    )
    record.ttfb(seconds + 0.25)
    return record


def answered(arrived: datetime, key_id: str, **usage: Any) -> dict[str, Any]:
    """The row of a completed, priced request that arrived at C{arrived}."""
    counts = {"input_tokens": 19, "output_tokens": 10, "cached_tokens": 0, **usage}
    return started(arrived, key_id).finish(
        now=arrived.timestamp() + 0.5,
        status_code=200,
        usage=Usage(
            COMPLETE,
            model="gpt-4o-mini-2024-07-18",
            raw={"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29},
            **counts,
        ),
        cost=GPT_4O_MINI_COST,
        stream=False,
        error_message=None,
    )


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


def stored_ids() -> list[str]:
    """The ids in llm_requests, in id (so arrival) order."""
    return [row[0] for row in support.run_sql("SELECT id::text FROM llm_requests ORDER BY id")]


class LogWriterTestCase(TestCase):
    """A connected Database on the test database and one api_keys row."""

    def setUp(self) -> defer.Deferred[None]:
        support.fresh_database()
        self.spools: dict[LogWriter, Spool] = {}
        self.db = Database(support.pg_config(), reactor=reactor, pool_size=2)
        self.addCleanup(self.db.close)
        self.key_id = str(uuid.uuid4())
        support.run_sql(
            "INSERT INTO api_keys (id, name, key_hash) VALUES (%s, 'Test', %s)",
            (self.key_id, hash_key("mdm_sk_test")),
        )
        return self.db.start()

    def writer(
        self,
        batch_size: int,
        flush_interval: float,
        db: Database | None = None,
        spool_dir: str | None = None,
        memory_limit: int = 10000,
        spool_max_bytes: int = 64 * 1024 * 1024,
    ) -> LogWriter:
        """
        A started LogWriter with a spool of its own (or in C{spool_dir},
        replaying what an earlier writer left there), stopped (and so flushed)
        before its Database closes; C{self.spools} maps it to its spool.
        """
        spool = Spool(spool_dir or self.mktemp(), max_bytes=spool_max_bytes)
        left_over = spool.open()
        self.addCleanup(spool.close)
        readers = ThreadPool(minthreads=0, maxthreads=1, name="test-spool-read")
        readers.start()
        self.addCleanup(readers.stop)
        writer = LogWriter(
            db or self.db,
            spool,
            reader_in(readers, reactor),
            batch_size=batch_size,
            flush_interval=flush_interval,
            memory_limit=memory_limit,
            clock=reactor,
        )
        writer.replay(left_over)
        writer.startService()
        self.addCleanup(lambda: writer.stopService() if writer.running else None)
        self.spools[writer] = spool
        return writer

    def records(self, count: int, start: datetime = ARRIVED) -> list[dict[str, Any]]:
        """C{count} answered requests of the test key, one second apart."""
        return [answered(start + timedelta(seconds=i), self.key_id) for i in range(count)]


class BatchingTests(LogWriterTestCase):
    """On PostgreSQL, flush() and stopService() write what is queued (timers: L{ClockedTests})."""

    def test_flush_writes_partial_batch(self) -> defer.Deferred[None]:
        """
        flush() writes a partial batch long before the timer would, and its
        Deferred fires only once the rows are committed.
        """

        async def go() -> None:
            writer = self.writer(batch_size=100, flush_interval=3600)
            records = self.records(2)
            for record in records:
                writer.add(record)
            await writer.flush()
            self.assertEqual(stored_ids(), [r["id"] for r in records])
            self.assertEqual(writer.queued, 0)

        return support.as_deferred(go())

    def test_stop_service_flushes_everything(self) -> defer.Deferred[None]:
        """
        stopService() fires only after every queued record is committed: the
        batch already being written and the records queued behind it.
        """

        async def go() -> None:
            writer = self.writer(batch_size=2, flush_interval=3600)
            records = self.records(5)
            for record in records:
                writer.add(record)  # the second add() starts writing a batch
            await writer.stopService()
            self.assertEqual(stored_ids(), [r["id"] for r in records])
            self.assertEqual((writer.queued, writer.rows_written), (0, 5))

        return support.as_deferred(go())


class RewriteTests(LogWriterTestCase):
    """A batch that is written again adds no rows and no requests to its key."""

    def key_usage(self) -> tuple[int, datetime | None]:
        ((count, last_used),) = support.run_sql(
            "SELECT request_count, last_used_at FROM api_keys WHERE id = %s", (self.key_id,)
        )
        return count, last_used

    def test_same_batch_written_twice(self) -> defer.Deferred[None]:
        """
        Writing records whose ids are already stored creates no duplicate row
        and leaves api_keys.request_count and last_used_at as they were; a
        later batch mixing old and new records counts only the new ones, and
        last_used_at stays the latest created_at of the key's rows.
        """

        async def go() -> None:
            writer = self.writer(batch_size=100, flush_interval=3600)
            records = self.records(3)
            for record in records:
                writer.add(record)
            await writer.flush()
            latest = ARRIVED + timedelta(seconds=2)
            self.assertEqual(self.key_usage(), (3, latest))

            for record in records:
                writer.add(record)
            await writer.flush()
            self.assertEqual(stored_ids(), [r["id"] for r in records])
            self.assertEqual(self.key_usage(), (3, latest))

            # A new record that arrived before the latest one, queued twice.
            earlier = answered(ARRIVED + timedelta(seconds=1, milliseconds=500), self.key_id)
            for record in [records[0], earlier, earlier, records[2]]:
                writer.add(record)
            await writer.flush()
            self.assertEqual(len(stored_ids()), 4)
            self.assertEqual(self.key_usage(), (4, latest))
            self.assertEqual(
                support.run_sql(
                    "SELECT max(created_at) FROM llm_requests WHERE majordomo_api_key_id = %s",
                    (self.key_id,),
                ),
                [(latest,)],
            )
            self.assertEqual(writer.queued, 0)

        return support.as_deferred(go())


class RowContentTests(LogWriterTestCase):
    """What the gateway's records become in llm_requests."""

    def test_record_keys_are_columns(self) -> None:
        """
        Every key of a finished or failed record names a column of
        llm_requests: jsonb_populate_recordset silently drops any other key,
        so a misspelt one would lose its value without an error.
        """
        columns = {
            row[0]
            for row in support.run_sql(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'llm_requests'"
            )
        }
        finished = answered(ARRIVED, self.key_id)
        failed = started(ARRIVED, self.key_id).failed(ARRIVED.timestamp() + 1, 502, "refused")
        self.assertEqual(set(finished) - columns, set())
        self.assertEqual(set(failed) - columns, set())

    def test_values_stored_exactly(self) -> defer.Deferred[None]:
        """
        Decimal costs read back exactly equal (no float on the way), unknown
        token counts stay NULL while reported zeros stay 0, JSON columns keep
        their structure, and created_at/responded_at are the record's own
        times, not the time of the INSERT.
        """

        async def go() -> None:
            writer = self.writer(batch_size=100, flush_interval=3600)
            record = answered(ARRIVED, self.key_id, reasoning_tokens=None, web_search_requests=0)
            record["total_cost"] = Decimal(
                "0.000008850000000000000000000000123"
            )  # no float holds it
            record["input_cost"] = Decimal("0.00000885")
            writer.add(record)
            await writer.flush()
            (row,) = support.run_sql(
                "SELECT created_at, responded_at, majordomo_api_key_id::text, provider,"
                " provider_api_key_hash, method, path, stream, status_code, error_message,"
                " model_requested, model, usage_status, input_tokens, output_tokens,"
                " cached_tokens, reasoning_tokens, cache_creation_5m_tokens,"
                " web_search_requests, input_cost, output_cost, total_cost, pricing_key,"
                " pricing_tier, price_source, raw_usage, ttfb_ms, duration_ms,"
                " raw_metadata, indexed_metadata FROM llm_requests WHERE id = %s",
                (record["id"],),
            )
            self.assertEqual(
                row,
                (
                    ARRIVED,
                    ARRIVED + timedelta(milliseconds=500),
                    self.key_id,
                    "openai",
                    hash_key("sk-test-provider-key"),
                    "POST",
                    "/v1/chat/completions",
                    False,
                    200,
                    None,
                    "gpt-4o-mini",
                    "gpt-4o-mini-2024-07-18",
                    COMPLETE,
                    19,
                    10,
                    0,
                    None,
                    None,
                    0,
                    Decimal("0.00000885"),
                    Decimal("0.000006"),
                    Decimal("0.000008850000000000000000000000123"),
                    "gpt-4o-mini",
                    "base",
                    "bundled",
                    {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29},
                    record["ttfb_ms"],
                    record["duration_ms"],
                    {},
                    {},
                ),
            )

        return support.as_deferred(go())

    def test_failed_records(self) -> defer.Deferred[None]:
        """
        A request refused before the provider saw it is stored with zero tokens
        and cost 0; one that may have been billed (a timeout) with NULL tokens
        and NULL cost, never 0.
        """

        async def go() -> None:
            writer = self.writer(batch_size=100, flush_interval=3600)
            refused = started(ARRIVED, self.key_id).failed(
                ARRIVED.timestamp() + 1, 502, "The upstream provider could not be reached"
            )
            timed_out = started(ARRIVED + timedelta(seconds=1), self.key_id).failed(
                ARRIVED.timestamp() + 61, 504, "timeout", maybe_billed=True
            )
            writer.add(refused)
            writer.add(timed_out)
            await writer.flush()
            rows = support.run_sql(
                "SELECT status_code, usage_status, input_tokens, output_tokens,"
                " reasoning_tokens, total_cost, error_message, stream"
                " FROM llm_requests ORDER BY id"
            )
            self.assertEqual(
                rows,
                [
                    (
                        502,
                        ERROR_NOT_BILLED,
                        0,
                        0,
                        0,
                        Decimal(0),
                        "The upstream provider could not be reached",
                        False,
                    ),
                    (504, "unknown", None, None, None, None, "timeout", False),
                ],
            )

        return support.as_deferred(go())


class SpoolFullTests(LogWriterTestCase):
    """A full spool delays nothing and leaks nothing."""

    def test_partly_journaled_batch(self) -> defer.Deferred[None]:
        """
        With room in the spool for one record of a batch of three, all three
        are still written (from memory), the failures are counted, and once
        committed the spool is empty again (no segment left, size back to 0).
        """

        async def go() -> None:
            spool_dir = self.mktemp()
            records = self.records(3)
            writer = self.writer(
                batch_size=3,
                flush_interval=3600,
                spool_dir=spool_dir,
                spool_max_bytes=len(encode_record(records[0])) + 10,
            )
            spool = self.spools[writer]
            for record in records:
                writer.add(record)
            await writer.flush()
            self.assertEqual(stored_ids(), [r["id"] for r in records])
            self.assertEqual(writer.spool_failures, 2)
            self.assertEqual(spool.size, 0)
            self.assertEqual(spooled(spool_dir), [])
            self.assertTrue(spool.writable())

        return support.as_deferred(go())


class RefusedRecordTests(LogWriterTestCase):
    """A record PostgreSQL refuses for its content does not hold the others back."""

    def test_refused_record_kept_aside(self) -> defer.Deferred[None]:
        """
        When one record of a batch cannot be stored even reduced (its id is
        not a UUID), the batch's other records are still written and counted
        against the key, and the refused one is kept in rejected.jsonl in the
        spool directory with PostgreSQL's reason; nothing stays queued.
        """

        async def go() -> None:
            spool_dir = self.mktemp()
            writer = self.writer(batch_size=100, flush_interval=3600, spool_dir=spool_dir)
            good = self.records(3)
            bad = answered(ARRIVED + timedelta(milliseconds=1500), self.key_id)
            bad["id"] = "not-a-uuid"
            for record in [good[0], good[1], bad, good[2]]:
                writer.add(record)
            await writer.flush()
            self.assertEqual(stored_ids(), [r["id"] for r in good])
            self.assertEqual(support.run_sql("SELECT request_count FROM api_keys"), [(3,)])
            self.assertEqual(writer.queued, 0)
            with open(os.path.join(spool_dir, "rejected.jsonl"), encoding="utf-8") as f:
                (rejected,) = [json.loads(line) for line in f]
            self.assertEqual(rejected["record"]["id"], "not-a-uuid")
            self.assertIn("invalid input syntax for type uuid", rejected["error"])

        return support.as_deferred(go())


def spooled(directory: str) -> list[str]:
    """The ids of the records journaled in a spool directory."""
    ids = []
    for path in sorted(glob.glob(os.path.join(directory, "*", "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            ids.extend(json.loads(line)["id"] for line in f)
    return ids


class _Plug(portforward.ProxyFactory):
    """
    PostgreSQL behind a plug: a TCP forwarder to it on a loopback port.
    Unplugged, the port refuses connections and the open ones are cut, as
    when the server is down.
    """

    noisy = False

    def __init__(self) -> None:
        super().__init__(support.PG_HOST, support.PG_PORT)
        self._servers: list[Any] = []
        self._listening: Any = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.listen_port = self._listening.getHost().port

    def buildProtocol(self, addr: Any) -> Any:
        server = super().buildProtocol(addr)
        self._servers.append(server)
        return server

    def unplug(self) -> defer.Deferred[None]:
        for server in self._servers:
            server.transport.abortConnection()
        self._servers = []
        listening, self._listening = self._listening, None
        if listening is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listening.stopListening)

    def plug(self) -> None:
        self._listening = reactor.listenTCP(self.listen_port, self, interface="127.0.0.1")


class UnavailableTests(LogWriterTestCase):
    """PostgreSQL being away delays records; it neither loses them nor raises."""

    def test_records_wait_while_postgres_is_unreachable(self) -> defer.Deferred[None]:
        """
        While the writer's Database cannot connect (it keeps retrying in the
        background), add() raises nothing, even when a full batch makes it try
        to write, and every record stays queued and journaled in the spool;
        stopService() then gives up without error, and a writer on a working
        Database, opening the same spool, writes every record, in order.
        """

        async def go() -> None:
            unreachable = Database(
                dataclasses.replace(support.pg_config(), port=1), reactor=reactor, pool_size=1
            )
            self.addCleanup(unreachable.close)
            unreachable.start()  # never fires: the connection keeps failing
            spool_dir = self.mktemp()
            waiting = self.writer(
                batch_size=2, flush_interval=0.05, db=unreachable, spool_dir=spool_dir
            )
            records = self.records(5)
            for record in records:
                waiting.add(record)
            await sleep(0.4)  # timer ticks and reconnection attempts fail meanwhile
            self.assertFalse(unreachable.available)
            self.assertEqual((waiting.queued, waiting.rows_written), (5, 0))
            self.assertEqual(stored_ids(), [])

            await waiting.stopService()
            self.spools[waiting].close()  # as the service tree does after the writer stops
            ids = [r["id"] for r in records]
            self.assertEqual(spooled(spool_dir), ids)

            writer = self.writer(batch_size=2, flush_interval=3600, spool_dir=spool_dir)
            self.assertEqual(writer.queued, 5)
            await writer.flush()
            self.assertEqual(stored_ids(), ids)
            self.assertEqual(support.run_sql("SELECT request_count FROM api_keys"), [(5,)])
            self.assertEqual(spooled(spool_dir), [])  # committed segments are deleted

        return support.as_deferred(go())

    async def plugged_database(self, plugged: bool) -> tuple[_Plug, Database]:
        """A started Database whose PostgreSQL is behind a L{_Plug}; connected if plugged."""
        plug = _Plug()
        self.addCleanup(plug.unplug)
        if not plugged:
            await plug.unplug()
        config = dataclasses.replace(support.pg_config(), host="127.0.0.1", port=plug.listen_port)
        db = Database(config, reactor=reactor, pool_size=1)
        self.addCleanup(db.close)
        started = db.start()
        if plugged:
            await started
        return plug, db

    def test_same_writer_writes_once_postgres_is_up(self) -> defer.Deferred[None]:
        """
        A writer started while PostgreSQL is down keeps what is added, and its
        own timer writes all of it, in order, as soon as PostgreSQL comes up:
        no flush() or restart from outside.
        """

        async def go() -> None:
            plug, db = await self.plugged_database(plugged=False)
            writer = self.writer(batch_size=2, flush_interval=0.05, db=db)
            records = self.records(5)
            for record in records:
                writer.add(record)
            await sleep(0.4)
            self.assertFalse(db.available)
            self.assertEqual(writer.queued, 5)
            self.assertEqual(stored_ids(), [])

            plug.plug()
            await support.wait_for(lambda: writer.queued == 0, timeout=10)
            self.assertEqual(stored_ids(), [r["id"] for r in records])
            self.assertEqual(writer.rows_written, 5)

        return support.as_deferred(go())

    def test_backlog_beyond_memory_limit(self) -> defer.Deferred[None]:
        """
        A backlog larger than memory_limit, whose later batches are kept only
        in the spool, is still written in full and in order once PostgreSQL
        is up.
        """

        async def go() -> None:
            plug, db = await self.plugged_database(plugged=False)
            writer = self.writer(batch_size=2, flush_interval=0.05, db=db, memory_limit=2)
            records = self.records(9)
            for record in records:
                writer.add(record)
            await sleep(0.3)
            self.assertEqual(writer.queued, 9)

            plug.plug()
            await support.wait_for(lambda: writer.queued == 0, timeout=10)
            self.assertEqual(stored_ids(), [r["id"] for r in records])

        return support.as_deferred(go())

    def test_same_writer_recovers_after_connection_drops(self) -> defer.Deferred[None]:
        """
        When PostgreSQL drops the writer's connection mid-run and refuses new
        ones for a while, records added meanwhile wait in the queue; once it
        takes connections again, the same writer's timer writes every one of
        them, in order, and the key's request_count counts each once.
        """

        async def go() -> None:
            plug, db = await self.plugged_database(plugged=True)
            writer = self.writer(batch_size=2, flush_interval=0.05, db=db)
            records = self.records(7)
            writer.add(records[0])
            await support.wait_for(lambda: writer.queued == 0, timeout=5)

            await plug.unplug()
            for record in records[1:]:
                writer.add(record)
            await support.wait_for(lambda: not db.available, timeout=5)
            await sleep(0.3)
            self.assertEqual(writer.queued, 6)
            self.assertEqual(stored_ids(), [records[0]["id"]])

            plug.plug()
            await support.wait_for(lambda: writer.queued == 0, timeout=10)
            self.assertEqual(stored_ids(), [r["id"] for r in records])
            self.assertEqual(support.run_sql("SELECT request_count FROM api_keys"), [(7,)])

        return support.as_deferred(go())


class _Batches:
    """
    A Database stand-in for L{LogWriter}: each run_operation is one batch,
    answered (or failed) by the test.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], defer.Deferred[None]]] = []

    def run_operation(self, sql: str, params: Any = None) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.calls.append(([record["id"] for record in json.loads(params[0])], d))
        return d

    def answer(self) -> list[str]:
        """Commit the oldest batch not yet answered; returns its ids."""
        ids, d = next((ids, d) for ids, d in self.calls if not d.called)
        d.callback(None)
        return ids

    def refuse_all(self) -> None:
        """Every batch not yet answered fails as if PostgreSQL were unreachable."""
        for _, d in self.calls:
            if not d.called:
                d.errback(psycopg2.OperationalError("server closed the connection"))

    @property
    def waiting(self) -> int:
        return sum(1 for _, d in self.calls if not d.called)


class ClockedTests(SynchronousTestCase):
    """The writer's timing, on a L{task.Clock} and an in-memory stand-in for PostgreSQL."""

    def writer(self, batch_size: int, flush_interval: float, memory_limit: int = 10000) -> None:
        self.clock = task.Clock()
        self.db = _Batches()
        self.spool = Spool(self.mktemp(), max_bytes=64 * 1024 * 1024)
        self.spool.open()
        self.addCleanup(self.spool.close)
        self.reads = 0

        def read(segment: Segment) -> defer.Deferred[list[str]]:
            self.reads += 1
            return defer.succeed(read_segment(segment))

        self.log_writer = LogWriter(
            cast(Database, self.db),
            self.spool,
            read,
            batch_size=batch_size,
            flush_interval=flush_interval,
            memory_limit=memory_limit,
            clock=self.clock,
        )
        self.log_writer.startService()

    def records(self, count: int) -> list[dict[str, Any]]:
        return [answered(ARRIVED + timedelta(seconds=i), "key") for i in range(count)]

    def test_full_batch_written_at_once(self) -> None:
        """
        With batch_size=3 and an hour-long timer, the third add() writes the
        three records as one batch; two more stay queued until the timer
        ticks, an hour later.
        """
        self.writer(batch_size=3, flush_interval=3600)
        records = self.records(5)
        for record in records[:3]:
            self.log_writer.add(record)
        self.assertEqual(self.db.answer(), [r["id"] for r in records[:3]])
        self.assertEqual((self.log_writer.queued, self.log_writer.rows_written), (0, 3))

        for record in records[3:]:
            self.log_writer.add(record)
        self.clock.advance(3599)
        self.assertEqual((self.db.waiting, self.log_writer.queued), (0, 2))
        self.clock.advance(1)
        self.assertEqual(self.db.answer(), [r["id"] for r in records[3:]])
        self.assertEqual(self.log_writer.queued, 0)

    def test_batches_wait_in_order_while_unavailable(self) -> None:
        """
        A batch PostgreSQL cannot take stays first in line: every tick tries
        it again, and once it is taken the batches behind it follow, in order.
        """
        self.writer(batch_size=2, flush_interval=1)
        records = self.records(4)
        for record in records:
            self.log_writer.add(record)
        self.db.refuse_all()
        self.assertEqual(self.log_writer.queued, 4)
        self.clock.advance(1)
        self.assertEqual(self.db.calls[-1][0], [r["id"] for r in records[:2]])
        self.assertEqual(self.db.answer(), [r["id"] for r in records[:2]])
        self.clock.advance(1)
        self.assertEqual(self.db.answer(), [r["id"] for r in records[2:]])
        self.assertEqual((self.log_writer.queued, self.log_writer.rows_written), (0, 4))

    def test_flush_retries_stop_gives_up(self) -> None:
        """
        flush() keeps trying every flush_interval while PostgreSQL is away and
        fires once the records are committed; stopService() tries once and
        fires even though PostgreSQL refused, leaving the records in the spool.
        """
        self.writer(batch_size=100, flush_interval=5)
        self.log_writer.add(self.records(1)[0])
        flushed = self.log_writer.flush()
        self.db.refuse_all()
        self.assertNoResult(flushed)
        self.clock.advance(5)
        self.db.answer()
        self.successResultOf(flushed)

        self.log_writer.add(self.records(2)[1])
        stopped = self.log_writer.stopService()
        self.db.refuse_all()
        self.successResultOf(stopped)
        self.assertEqual(self.log_writer.queued, 1)

    def test_backlog_beyond_memory_limit_read_back(self) -> None:
        """
        Batches past memory_limit are kept only in the spool and read back
        (through the writer's reader, never in the reactor) when their turn
        comes; every record is still written, in order, one batch a tick.
        """
        self.writer(batch_size=2, flush_interval=1, memory_limit=2)
        records = self.records(6)
        for record in records:
            self.log_writer.add(record)
        self.db.refuse_all()
        self.assertEqual(self.reads, 0)
        written: list[str] = []
        for _ in range(3):  # one batch a tick
            self.clock.advance(1)
            written += self.db.answer()
        self.assertEqual(written, [r["id"] for r in records])
        self.assertEqual(self.reads, 2)
        self.assertEqual(self.log_writer.queued, 0)
