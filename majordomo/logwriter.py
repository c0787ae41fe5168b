# -*- test-case-name: tests.test_logwriter -*-
"""
The batching writer: request records go to PostgreSQL in batches, never on
the response path.

Records are buffered and written every C{flush_interval} seconds, or as soon
as C{batch_size} are waiting, as ONE statement per batch: the rows go in through
C{jsonb_populate_recordset} (txpostgres cannot COPY or executemany) with
C{ON CONFLICT (id) DO NOTHING}, and the same statement adds the inserted rows
to C{api_keys.request_count} / C{last_used_at}.  A batch that is written twice
therefore changes nothing the second time.  A batch that fails (PostgreSQL is
down) stays queued, in order, and is retried on the next tick.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from majordomo.db import Database, is_unavailable

log = Logger()

INSERT_BATCH = """
WITH inserted AS (
    INSERT INTO llm_requests
    SELECT * FROM jsonb_populate_recordset(NULL::llm_requests, %s::jsonb)
    ON CONFLICT (id) DO NOTHING
    RETURNING majordomo_api_key_id, created_at
), per_key AS (
    SELECT majordomo_api_key_id AS id, count(*) AS n, max(created_at) AS last_used
    FROM inserted WHERE majordomo_api_key_id IS NOT NULL
    GROUP BY majordomo_api_key_id
)
UPDATE api_keys SET
    request_count = api_keys.request_count + per_key.n,
    last_used_at = GREATEST(api_keys.last_used_at, per_key.last_used)
FROM per_key WHERE api_keys.id = per_key.id
"""


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)  # exact: PostgreSQL parses the string into NUMERIC
    return str(value)


def encode_batch(records: Iterable[dict[str, Any]]) -> str:
    """The JSON array one INSERT takes; Decimals and UUIDs become exact strings."""
    return json.dumps(list(records), default=_json_default, separators=(",", ":"))


class LogWriter(service.Service):
    """Queues records and writes them to PostgreSQL in batches."""

    def __init__(
        self,
        db: Database,
        batch_size: int,
        flush_interval: float,
        clock: Any = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._db = db
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._clock = clock
        self._pending: deque[dict[str, Any]] = deque()
        self._flushing: defer.Deferred[None] | None = None
        self._loop: task.LoopingCall | None = None
        self._warned_unavailable = False
        self.rows_written = 0

    @property
    def queued(self) -> int:
        """Records waiting to be written (including a batch being written)."""
        return len(self._pending)

    def add(self, record: dict[str, Any]) -> None:
        """Queue one request's record; a full batch is written at once."""
        self._pending.append(record)
        if len(self._pending) >= self._batch_size and self._flushing is None:
            self._write_one_batch()

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._flush_interval, now=False)

    def stopService(self) -> defer.Deferred[None]:
        """Stop the timer, then write everything still queued."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.flush()

    def _tick(self) -> None:
        # A LoopingCall whose function raises stops for good: never raise here.
        if self._flushing is None and self._pending:
            self._write_one_batch()

    @defer.inlineCallbacks
    def flush(self) -> Any:
        """Write every queued record; fires when they are all committed."""
        while self._pending or self._flushing is not None:
            if self._flushing is not None:
                yield self._flushing
                continue
            before = len(self._pending)
            yield self._write_one_batch()
            if len(self._pending) >= before:
                # PostgreSQL refused the batch; wait before the next attempt.
                yield task.deferLater(self._clock, self._flush_interval, lambda: None)

    def _write_one_batch(self) -> defer.Deferred[None]:
        count = min(len(self._pending), self._batch_size)
        batch = [self._pending[i] for i in range(count)]
        d = self._db.run_operation(INSERT_BATCH, (encode_batch(batch),))
        d.addCallbacks(self._written, self._failed, callbackArgs=(count,))
        self._flushing = d
        return d

    def _written(self, _: object, count: int) -> None:
        for _ in range(count):
            self._pending.popleft()
        self.rows_written += count
        self._flushing = None
        if self._warned_unavailable:
            log.info("PostgreSQL is back; writing queued request records")
            self._warned_unavailable = False

    def _failed(self, failure: Any) -> None:
        self._flushing = None
        if is_unavailable(failure):
            if not self._warned_unavailable:
                log.warn(
                    "PostgreSQL unavailable; {queued} request records wait to be written",
                    queued=len(self._pending),
                )
                self._warned_unavailable = True
            return
        log.failure("Writing {count} request records failed", failure, count=len(self._pending))
