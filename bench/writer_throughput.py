"""
How many rows per second the log writer sustains into PostgreSQL, for a few
batch sizes, and what one queued record costs in memory and on disk.

Records are realistic (every column the gateway fills, a raw usage object);
each run adds N records as fast as it can and waits until all are committed,
journaling included.  Memory per record is measured with tracemalloc on a
writer whose PostgreSQL is unreachable (records queue in memory and spool).

    .venv/bin/python bench/writer_throughput.py [--records 50000]

Needs the local PostgreSQL (it uses a database `majordomo_bench`).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import tracemalloc
from decimal import Decimal
from typing import Any

from twisted.internet import defer, reactor, task

from majordomo.config import PostgresConfig
from majordomo.db import Database
from majordomo.db.schema import apply_schema
from majordomo.ids import uuid7
from majordomo.ledger.record import RequestRecord
from majordomo.ledger.spool import Spool
from majordomo.ledger.writer import LogWriter
from majordomo.usage import Usage

CONFIG = PostgresConfig(host="127.0.0.1", database="majordomo_bench", pool_size=4)


@dataclasses.dataclass
class _Cost:
    input_cost: Decimal = Decimal("0.00000285")
    output_cost: Decimal = Decimal("0.000006")
    total_cost: Decimal = Decimal("0.00000885")
    pricing_key: str = "gpt-4o-mini-2024-07-18"
    pricing_tier: str = "base"
    price_source: str = "litellm-1.110.2+majordomo-1"


def a_record(now: float) -> dict[str, Any]:
    record = RequestRecord.start(
        request_id=uuid7(now),
        arrived=now,
        key_id="018f0000-0000-7000-8000-000000000001",
        provider="openai",
        method="POST",
        path="/v1/chat/completions",
        model_requested="gpt-4o-mini",
        provider_key_hash="3b" * 32,
    )
    record.ttfb(now + 0.2)
    usage = Usage(
        usage_status="complete",
        model="gpt-4o-mini-2024-07-18",
        service_tier="default",
        input_tokens=19,
        output_tokens=10,
        cached_tokens=0,
        cache_creation_tokens=0,
        reasoning_tokens=0,
        input_audio_tokens=0,
        output_audio_tokens=0,
        raw={
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        },
    )
    return record.finish(now + 0.5, 200, usage, _Cost(), stream=False, error_message=None)


async def throughput(db: Database, records: int, batch_size: int) -> float:
    await db.run_operation("TRUNCATE llm_requests")
    spool = Spool(tempfile.mkdtemp(prefix="bench-spool-"), 1 << 34)
    spool.open()
    writer = LogWriter(db, spool, batch_size=batch_size, flush_interval=0.2, clock=reactor)
    writer.startService()
    now = time.time()
    started = time.perf_counter()
    for i in range(records):
        writer.add(a_record(now + i * 1e-4))
        if i % 1000 == 999:
            await task.deferLater(reactor, 0, lambda: None)  # let batches go out
    await writer.flush()
    elapsed = time.perf_counter() - started
    await writer.stopService()
    return records / elapsed


async def memory_per_record(records: int) -> tuple[float, float]:
    unreachable = Database(dataclasses.replace(CONFIG, port=1), reactor=reactor, pool_size=1)
    spool = Spool(tempfile.mkdtemp(prefix="bench-spool-"), 1 << 34)
    spool.open()
    writer = LogWriter(
        unreachable, spool, batch_size=500, flush_interval=3600, memory_limit=records, clock=reactor
    )
    made = [a_record(time.time()) for _ in range(records)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for record in made:
        writer.add(record)
    writer._seal()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    spool.close()
    return (after - before) / records, spool.size / records


async def main(args: argparse.Namespace) -> None:
    await apply_schema(reactor, CONFIG)
    db = Database(CONFIG, reactor=reactor)
    await db.start()
    try:
        for batch_size in (100, 500, 1000, 2000):
            rate = await throughput(db, args.records, batch_size)
            print(f"batch_size={batch_size}: {rate:,.0f} rows/s ({args.records} records)")
    finally:
        db.close()
    in_memory, on_disk = await memory_per_record(10000)
    print(f"per queued record: {in_memory:,.0f} bytes in memory, {on_disk:,.0f} bytes in the spool")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50000)
    task.react(lambda _: defer.Deferred.fromCoroutine(main(parser.parse_args())))
