"""
L{majordomo.policy.leases.LeaseBook} against the real PostgreSQL: admission
from the share in memory, one lease question at a time per holding, two
processes sharing one limit, giving back, renewal, takeover and PostgreSQL
being away.  Where timing matters the book runs on a L{task.Clock} (its
expiry logic), while its queries go through the real reactor.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from majordomo.db import Database
from majordomo.db.keys import hash_key
from majordomo.ledger.statement import INSERT_BATCH
from majordomo.policy import leases
from majordomo.policy.leases import LeaseBook, WindowId
from majordomo.policy.rules import window_at
from tests import support

LIMIT = Decimal("1")


class CountingDatabase(Database):
    """A Database that counts lease questions, and how many were ever open at once."""

    asked = 0
    open = 0
    most_open = 0

    def run_query(self, sql: str, params: Any = None, retry_for: float = 0.0) -> Any:
        if sql != leases.LEASE:
            return super().run_query(sql, params, retry_for)
        self.asked += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)

        def closed(result: object) -> object:
            self.open -= 1
            return result

        return super().run_query(sql, params, retry_for).addBoth(closed)


def lease_rows(window: WindowId) -> dict[str, tuple[Decimal, float]]:
    """The window's leases in PostgreSQL: holder -> (amount, expiry epoch)."""
    rows = support.run_sql(
        "SELECT h, (l->>'a')::numeric, (l->>'x')::float FROM policy_windows, "
        "jsonb_each(leases) AS e(h, l) WHERE majordomo_api_key_id = %s AND bucket = %s "
        "AND kind = %s AND window_start = %s",
        (window.key_id, window.bucket, window.kind, window.start),
    )
    return {holder: (Decimal(amount), expiry) for holder, amount, expiry in rows}


def spent_and_leased(window: WindowId) -> Decimal:
    """spent + every lease of the window."""
    (total,) = support.run_sql(
        "SELECT spent + coalesce((SELECT sum((l->>'a')::numeric) FROM jsonb_each(leases) "
        "AS e(h, l)), 0) FROM policy_windows WHERE majordomo_api_key_id = %s AND bucket = %s "
        "AND kind = %s AND window_start = %s",
        (window.key_id, window.bucket, window.kind, window.start),
    )[0]
    return Decimal(total)


class LeaseBookTests(TestCase):
    """A key with a day window; books on their own Database pools."""

    def setUp(self) -> defer.Deferred[None]:
        support.fresh_database()
        key_id = str(uuid.uuid4())
        support.run_sql(
            "INSERT INTO api_keys (id, name, key_hash) VALUES (%s, 'Leases', %s)",
            (key_id, hash_key(f"mdm_sk_{key_id}")),
        )
        self.window = WindowId(key_id, "", "day", window_at("day", datetime.now(UTC)).start)
        self.db = self.database()
        return self.db.when_connected()

    def database(self) -> CountingDatabase:
        db = CountingDatabase(support.pg_config(), reactor=reactor, pool_size=2)
        self.addCleanup(db.close)
        db.start()
        return db

    async def connected_database(self) -> CountingDatabase:
        db = self.database()
        await db.when_connected()
        return db

    def book(self, holder: str, db: Database | None = None, **kwargs: Any) -> LeaseBook:
        book = LeaseBook(db or self.db, kwargs.pop("clock", reactor), holder=holder, **kwargs)
        self.addCleanup(lambda: book.stop())
        return book

    def test_take_within_share_needs_no_question(self) -> defer.Deferred[None]:
        """Ten takes of 0.1 out of a 1.0 share: one question; the eleventh asks again."""

        async def go() -> None:
            book = self.book("gw-a")
            held = book.holding(self.window, Decimal(5))
            tenth = Decimal("0.1")
            for _ in range(10):
                self.assertTrue(await book.take(held, tenth, tenth, Decimal(1)))
            self.assertEqual((self.db.asked, held.reserved, held.available), (1, 1, 0))
            self.assertEqual(lease_rows(self.window)["gw-a"][0], 1)
            self.assertTrue(await book.take(held, tenth, tenth, Decimal(1)))
            self.assertEqual((self.db.asked, held.share), (2, 2))

        return support.as_deferred(go())

    def test_concurrent_takes_share_one_question(self) -> defer.Deferred[None]:
        """20 takes at once on an empty holding: one lease question, and every take admitted."""

        async def go() -> None:
            book = self.book("gw-a")
            held = book.holding(self.window, Decimal(5))
            amount = Decimal("0.05")
            takes = [
                defer.Deferred.fromCoroutine(book.take(held, amount, amount, Decimal(1)))
                for _ in range(20)
            ]
            self.assertEqual(await defer.gatherResults(takes), [True] * 20)
            self.assertEqual((self.db.asked, self.db.most_open), (1, 1))
            self.assertEqual((held.share, held.reserved), (1, 1))

        return support.as_deferred(go())

    def test_concurrent_takes_beyond_one_grant(self) -> defer.Deferred[None]:
        """
        20 takes at once when each question grants one take's worth: the
        questions go one at a time, and every take within the limit is admitted.
        """

        async def go() -> None:
            book = self.book("gw-a")
            held = book.holding(self.window, Decimal(5))
            amount = Decimal("0.05")
            takes = [
                defer.Deferred.fromCoroutine(book.take(held, amount, amount, amount))
                for _ in range(20)
            ]
            self.assertEqual(await defer.gatherResults(takes), [True] * 20)
            self.assertEqual(self.db.most_open, 1)
            self.assertEqual(held.reserved, 1)

        return support.as_deferred(go())

    def test_a_reached_limit_costs_no_question_per_refusal(self) -> defer.Deferred[None]:
        """
        Once PostgreSQL has granted nothing, takes needing as much are refused
        without asking again for a second (a burst at the limit is no burst of
        statements); a smaller one, or one a second later, asks.
        """

        async def go() -> None:
            book = self.book("gw-a")
            held = book.holding(self.window, Decimal("0.10"))
            amount = Decimal("0.06")
            self.assertTrue(await book.take(held, amount, amount, amount))
            self.assertFalse(await book.take(held, amount, amount, amount))
            asked = self.db.asked
            refused = [await book.take(held, amount, amount, amount) for _ in range(50)]
            self.assertEqual(refused, [False] * 50)
            self.assertEqual(self.db.asked, asked)
            small = Decimal("0.03")
            self.assertTrue(await book.take(held, small, small, small))
            self.assertEqual(self.db.asked, asked + 1)
            await support.sleep(1.05)
            self.assertFalse(await book.take(held, amount, amount, amount))
            self.assertEqual(self.db.asked, asked + 2)

        return support.as_deferred(go())

    def test_two_books_never_admit_more_than_the_limit(self) -> defer.Deferred[None]:
        """
        Two holders (each on its own pool) take 0.03 at a time, concurrently,
        until refused: together they admit at most the limit, and stop within
        one take of it.
        """

        async def go() -> None:
            books = [self.book("gw-a"), self.book("gw-b", db=await self.connected_database())]
            amount = Decimal("0.03")
            admitted: list[Decimal] = []

            async def client(book: LeaseBook) -> None:
                held = book.holding(self.window, LIMIT)
                while await book.take(held, amount, amount, Decimal("0.1")):
                    admitted.append(amount)
                    await support.sleep(0)

            await defer.gatherResults(
                [defer.Deferred.fromCoroutine(client(b)) for b in books for _ in range(4)]
            )
            self.assertLessEqual(sum(admitted), LIMIT)
            self.assertGreater(sum(admitted), LIMIT - 2 * amount)
            self.assertLessEqual(spent_and_leased(self.window), LIMIT)
            self.assertEqual(set(lease_rows(self.window)), {"gw-a", "gw-b"})

        return support.as_deferred(go())

    def test_stop_gives_back_the_unused_share(self) -> defer.Deferred[None]:
        """
        On stop, what no request holds or used goes back; what was used stays
        leased until its row is inserted, and what is in flight stays too.
        """

        async def go() -> None:
            book = self.book("gw-a")
            held = book.holding(self.window, Decimal(5))
            self.assertTrue(await book.take(held, Decimal("0.25"), Decimal("0.25"), Decimal(1)))
            self.assertTrue(await book.take(held, Decimal("0.125"), Decimal("0.125"), Decimal(1)))
            book.release(held, Decimal("0.25"), Decimal("0.0401"))  # one request ended
            await book.stop()
            self.assertEqual(len(book), 0)
            in_flight_and_used = Decimal("0.125") + Decimal("0.0401")
            self.assertEqual(lease_rows(self.window)["gw-a"][0], in_flight_and_used)
            # The ended request's row arrives: its cost moves from the lease to spent.
            row = {
                "id": str(uuid.uuid4()),
                "created_at": datetime.now(UTC).isoformat(),
                "majordomo_api_key_id": self.window.key_id,
                "provider": "openai",
                "method": "POST",
                "path": "/v1/chat/completions",
                "stream": False,
                "usage_status": "complete",
                "total_cost": "0.0401",
                "raw_metadata": {},
                "indexed_metadata": {},
                "lease_holder": "gw-a",
            }
            support.run_sql(
                "INSERT INTO key_policies (majordomo_api_key_id, budget_usd, budget_period) "
                "VALUES (%s, 5, 'day')",
                (self.window.key_id,),
            )
            support.run_sql(INSERT_BATCH, (json.dumps([row]),))
            self.assertEqual(lease_rows(self.window)["gw-a"][0], Decimal("0.125"))
            self.assertEqual(spent_and_leased(self.window), Decimal("0.1651"))

        return support.as_deferred(go())

    def test_renewal_keeps_the_lease_alive(self) -> defer.Deferred[None]:
        """
        On a Clock: each tick renews the lease in PostgreSQL, and the share
        stays usable without a question for twice the ttl.
        """

        async def go() -> None:
            clock = task.Clock()
            book = self.book("gw-a", clock=clock, ttl=40.0)
            held = book.holding(self.window, Decimal(5))
            tenth = Decimal("0.1")
            self.assertTrue(await book.take(held, tenth, tenth, Decimal(1)))
            first_expiry = lease_rows(self.window)["gw-a"][1]
            book.start()
            for _ in range(8):  # 80 clock seconds: twice the ttl
                clock.advance(10)
                ticked = clock.seconds()
                await support.wait_for(lambda at=ticked: held.alive_until == at + 30)
            self.assertGreater(lease_rows(self.window)["gw-a"][1], first_expiry)
            self.assertTrue(await book.take(held, tenth, tenth, Decimal(1)))
            self.assertEqual(self.db.asked, 1)

        return support.as_deferred(go())

    def test_unrenewed_share_is_not_used(self) -> defer.Deferred[None]:
        """
        Without renewal the share is not used after 3/4 ttl: the next take asks,
        with what is in flight as the holder's base, and grows from there.
        """

        async def go() -> None:
            clock = task.Clock()
            book = self.book("gw-a", clock=clock, ttl=40.0)
            held = book.holding(self.window, Decimal(5))
            tenth = Decimal("0.1")
            self.assertTrue(await book.take(held, tenth, tenth, Decimal(1)))
            clock.advance(29)
            self.assertTrue(await book.take(held, tenth, tenth, Decimal(1)))
            self.assertEqual(self.db.asked, 1)
            clock.advance(1)
            book.release(held, tenth, tenth)  # one of the two requests ended
            self.assertTrue(await book.take(held, tenth, tenth, Decimal(1)))
            self.assertEqual(self.db.asked, 2)
            # Rebuilt from what is in flight (0.1), then grown by a grant of 1.
            self.assertEqual(lease_rows(self.window)["gw-a"][0], Decimal("1.1"))
            self.assertEqual((held.share, held.reserved), (Decimal("1.1"), Decimal("0.2")))

        return support.as_deferred(go())

    def test_taken_over_lease_resynchronises(self) -> defer.Deferred[None]:
        """
        The holder's entry is gone from PostgreSQL (expired and taken over):
        the next renewal notices, the share stops being used, and the next
        take asks with what is in flight as its base.
        """

        async def go() -> None:
            clock = task.Clock()
            book = self.book("gw-a", clock=clock, ttl=40.0)
            held = book.holding(self.window, LIMIT)
            quarter = Decimal("0.25")
            self.assertTrue(await book.take(held, quarter, quarter, Decimal(1)))
            support.run_sql("UPDATE policy_windows SET leases = leases - 'gw-a'")
            other = self.book("gw-b", db=await self.connected_database())
            other_held = other.holding(self.window, LIMIT)
            self.assertTrue(await other.take(other_held, quarter, quarter, Decimal("0.5")))
            book.start()
            clock.advance(10)
            await support.wait_for(lambda: held.alive_until == 0.0)
            # 0.75 of the share is unreserved here, but it is no longer ours.
            self.assertTrue(await book.take(held, quarter, quarter, quarter))
            self.assertEqual(lease_rows(self.window)["gw-a"][0], Decimal("0.5"))
            self.assertFalse(await book.take(held, quarter, quarter, quarter))
            self.assertEqual(spent_and_leased(self.window), LIMIT)

        return support.as_deferred(go())

    def test_postgres_unreachable_is_unavailable(self) -> defer.Deferred[None]:
        """A book whose PostgreSQL cannot be reached raises Unavailable, within ASK_TIMEOUT."""

        async def go() -> None:
            closed = dataclasses.replace(support.pg_config(), port=1)
            db = Database(closed, reactor=reactor, pool_size=1)
            self.addCleanup(db.close)
            db.start()
            book = self.book("gw-a", db=db)
            held = book.holding(self.window, LIMIT)
            started = time.monotonic()
            with self.assertRaises(leases.Unavailable):
                await book.take(held, Decimal("0.1"), Decimal("0.1"), Decimal(1))
            self.assertLess(time.monotonic() - started, leases.ASK_TIMEOUT)

        return support.as_deferred(go())

    def test_finished_rate_windows_are_deleted(self) -> defer.Deferred[None]:
        """
        A tick deletes rate-limit windows older than RATE_WINDOWS_KEPT (they
        would grow by one row a minute per bucket), and no budget window.
        """

        async def go() -> None:
            key_id = self.window.key_id
            for kind, minutes in (("rpm", 10), ("tpm", 10), ("rpm", 1), ("day", 10)):
                support.run_sql(
                    "INSERT INTO policy_windows (majordomo_api_key_id, bucket, kind, window_start) "
                    "VALUES (%s, 'old', %s, date_trunc('minute', now()) - %s * interval '1 min')",
                    (key_id, kind, minutes),
                )
            clock = task.Clock()
            book = self.book("gw-a", clock=clock, ttl=40.0)
            held = book.holding(self.window, Decimal(5))
            self.assertTrue(await book.take(held, Decimal(1), Decimal(1), Decimal(1)))
            book.start()
            clock.advance(10)

            def left() -> list[tuple[Any, ...]]:
                return support.run_sql(
                    "SELECT kind, bucket FROM policy_windows ORDER BY kind, bucket"
                )

            await support.wait_for(lambda: len(left()) == 3)
            self.assertEqual(left(), [("day", ""), ("day", "old"), ("rpm", "old")])

        return support.as_deferred(go())
