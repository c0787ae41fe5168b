"""
The budget ledger in PostgreSQL itself: C{majordomo_window_start} against
L{majordomo.policy.rules.window_at}, C{majordomo_lease} (what it grants,
alone and raced by many connections), the batch statement's spent counters
and lease charges (random batches, replays) and the recount that
L{majordomo.policy.store.PolicyStore.change} makes while batches keep
arriving.  Every check compares a counter with the rows themselves.
"""

from __future__ import annotations

import decimal
import json
import random
import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg2
from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from majordomo.db import Database
from majordomo.db.keys import hash_key
from majordomo.ledger.statement import INSERT_BATCH
from majordomo.policy.rules import window_at
from majordomo.policy.store import PolicyStore
from tests import support

# Sums of many costs with up to 20 decimals stay exact well within this.
EXACT = decimal.Context(prec=80)
WindowKey = tuple[str, str, str, datetime]  # key id, bucket, kind, window start


def new_key() -> str:
    """An api_keys row; returns its id."""
    key_id = str(uuid.uuid4())
    support.run_sql(
        "INSERT INTO api_keys (id, name, key_hash) VALUES (%s, 'Budget', %s)",
        (key_id, hash_key(f"mdm_sk_{key_id}")),
    )
    return key_id


def set_budget(key_id: str, usd: str, period: str, per: str | None = None) -> None:
    support.run_sql(
        "INSERT INTO key_policies (majordomo_api_key_id, budget_usd, budget_period, per_metadata)"
        " VALUES (%s, %s, %s, %s)",
        (key_id, Decimal(usd), period, per),
    )


def random_cost(rng: random.Random) -> Decimal:
    """A cost below $1000 with 6 to 20 decimals, as priced costs have."""
    return Decimal(rng.randint(0, 10**9)).scaleb(-rng.randint(6, 20))


def record(
    key_id: str | None,
    at: datetime,
    cost: Decimal | None,
    metadata: dict[str, str] | None = None,
    holder: str | None = None,
) -> dict[str, Any]:
    """A minimal llm_requests record as the log writer journals it (costs as strings)."""
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "created_at": at.isoformat(),
        "majordomo_api_key_id": key_id,
        "provider": "openai",
        "method": "POST",
        "path": "/v1/chat/completions",
        "stream": False,
        "usage_status": "complete" if cost is not None else "unknown",
        "total_cost": None if cost is None else str(cost),
        "raw_metadata": metadata or {},
        "indexed_metadata": {},
    }
    if holder is not None:
        row["lease_holder"] = holder
    return row


def insert_batch(records: list[dict[str, Any]], cursor: Any = None) -> None:
    """The log writer's statement, exactly, on one batch."""
    if cursor is None:
        support.run_sql(INSERT_BATCH, (json.dumps(records),))
    else:
        cursor.execute(INSERT_BATCH, (json.dumps(records),))


def windows() -> dict[WindowKey, tuple[Decimal, dict[str, Any]]]:
    """Every policy_windows row: (spent, leases)."""
    rows = support.run_sql(
        "SELECT majordomo_api_key_id::text, bucket, kind, window_start, spent, leases "
        "FROM policy_windows"
    )
    return {(k, b, kind, ws): (Decimal(spent), leases) for k, b, kind, ws, spent, leases in rows}


def lease(
    key_id: str,
    window: datetime,
    holder: str,
    limit: str,
    want: str,
    need: str = "0",
    ttl: float = 60.0,
    base: str | None = None,
    cursor: Any = None,
    bucket: str = "",
    kind: str = "day",
) -> tuple[Decimal, Decimal, Decimal]:
    """majordomo_lease on one window (a day of bucket '' unless told); (share, granted, spent)."""
    statement = "SELECT * FROM majordomo_lease(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    params: tuple[Any, ...] = (
        key_id,
        bucket,
        kind,
        window,
        holder,
        Decimal(limit),
        Decimal(want),
        Decimal(need),
    )
    params += (ttl,)
    params += (None if base is None else Decimal(base),)
    if cursor is None:
        (row,) = support.run_sql(statement, params)
    else:
        cursor.execute(statement, params)
        (row,) = cursor.fetchall()
    return Decimal(row[0]), Decimal(row[1]), Decimal(row[2])


def lease_amounts(
    key_id: str, window: datetime, bucket: str = "", kind: str = "day"
) -> dict[str, Decimal]:
    """Each holder's amount in one window's leases (read as NUMERIC: jsonb numbers are exact)."""
    rows = support.run_sql(
        "SELECT h, (l->>'a')::numeric FROM policy_windows, jsonb_each(leases) AS e(h, l) "
        "WHERE majordomo_api_key_id = %s AND kind = %s AND bucket = %s AND window_start = %s",
        (key_id, kind, bucket, window),
    )
    return {holder: Decimal(amount) for holder, amount in rows}


def connect() -> Any:
    connection = psycopg2.connect(**support.pg_config().dsn_parameters(None))
    connection.autocommit = True
    return connection


class WindowStartTests(SynchronousTestCase):
    """SQL and Python agree on every window, whatever the session's time zone."""

    def setUp(self) -> None:
        support.fresh_database()

    def instants(self) -> list[datetime]:
        """Edges people get wrong, then many random instants in random offsets."""
        edges = [
            datetime(2024, 2, 28, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2024, 2, 29, 0, 0, tzinfo=UTC),  # a leap day
            datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
            datetime(2024, 3, 1, 0, 0, tzinfo=UTC),
            datetime(2023, 2, 28, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # a year's end
            datetime(2026, 1, 1, 0, 0, tzinfo=UTC),
            datetime(2025, 11, 30, 23, 59, 59, 999999, tzinfo=UTC),  # a Sunday
            datetime(2025, 12, 1, 0, 0, tzinfo=UTC),  # the Monday after
            datetime(2025, 1, 31, 12, 0, tzinfo=UTC),
            datetime(2024, 12, 30, 0, 0, tzinfo=UTC),  # Monday of ISO week 1 of 2025
            datetime(1970, 1, 1, 0, 0, tzinfo=UTC),
            datetime(2099, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            # 00:30 on the 1st in Kolkata is still the previous month in UTC.
            datetime(2025, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            # 20:00 on a Sunday in New York is Monday in UTC.
            datetime(2025, 11, 30, 20, 0, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2024, 2, 29, 23, 0, tzinfo=timezone(timedelta(hours=-13, minutes=-45))),
            datetime(2024, 3, 1, 1, 0, tzinfo=timezone(timedelta(hours=14))),
        ]
        rng = random.Random(14)
        start = datetime(1990, 1, 1, tzinfo=UTC).timestamp()
        end = datetime(2090, 1, 1, tzinfo=UTC).timestamp()
        for _ in range(600):
            offset = timezone(timedelta(minutes=rng.randrange(-14 * 60, 14 * 60 + 1, 15)))
            moment = datetime.fromtimestamp(rng.uniform(start, end), UTC).astimezone(offset)
            edges.append(moment.replace(microsecond=rng.choice([0, 999999, moment.microsecond])))
        # Each window's own edges: its first instant, its last, and the next one's first.
        for moment in list(edges[:17]):
            for kind in ("day", "week", "month", "rpm"):
                window = window_at(kind, moment)
                assert window.end is not None
                edges += [window.start, window.end - timedelta(microseconds=1), window.end]
        return edges

    def test_sql_matches_python(self) -> None:
        """Every kind, every instant, in several session time zones: the same window start."""
        instants = self.instants()
        kinds = ("day", "week", "month", "total", "rpm", "tpm")
        for zone in ("UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"):
            for kind in kinds:
                rows = support.run_sql(
                    f"SET TIME ZONE '{zone}'; SELECT majordomo_window_start(%s, t) "
                    "FROM unnest(%s::timestamptz[]) WITH ORDINALITY AS u(t, i) ORDER BY i",
                    (kind, instants),
                )
                self.assertEqual(len(rows), len(instants))
                for moment, (started,) in zip(instants, rows, strict=True):
                    self.assertEqual(
                        started, window_at(kind, moment).start, f"{kind} at {moment} in {zone}"
                    )

    def test_windows_are_calendar_windows(self) -> None:
        """A window holds its own start and last microsecond, and its end starts the next."""
        for moment in self.instants():
            for kind in ("day", "week", "month", "rpm"):
                window = window_at(kind, moment)
                assert window.end is not None
                self.assertTrue(window.start <= moment < window.end)
                self.assertEqual(window.start.utcoffset(), timedelta(0))
                last = window.end - timedelta(microseconds=1)
                self.assertEqual(window_at(kind, last).start, window.start)
                self.assertEqual(window_at(kind, window.end).start, window.end)
            self.assertEqual(window_at("week", moment).start.weekday(), 0)
            self.assertEqual(window_at("month", moment).start.day, 1)


class LeaseTests(SynchronousTestCase):
    """majordomo_lease: what one call grants, gives back, drops and keeps."""

    def setUp(self) -> None:
        support.fresh_database()
        self.key = new_key()
        self.window = window_at("day", datetime.now(UTC)).start

    def spend(self, amount: str) -> None:
        support.run_sql(
            "INSERT INTO policy_windows (majordomo_api_key_id, bucket, kind, window_start, spent) "
            "VALUES (%s, '', 'day', %s, %s)",
            (self.key, self.window, Decimal(amount)),
        )

    def test_grants_what_the_limit_leaves(self) -> None:
        """Never beyond limit - spent - live leases; partial grants; need > available is 0."""
        self.spend("3.25")
        self.assertEqual(lease(self.key, self.window, "a", "10", "4"), (4, 4, Decimal("3.25")))
        # b wants 5 and needs 1: 2.75 are left, all of it granted.
        self.assertEqual(lease(self.key, self.window, "b", "10", "5", "1")[:2], (2.75, 2.75))
        self.assertEqual(lease(self.key, self.window, "c", "10", "1", "0")[:2], (0, 0))
        # a asks for more than is left with a need that cannot be met: nothing, share kept.
        self.assertEqual(lease(self.key, self.window, "a", "10", "1", "0.01")[:2], (4, 0))
        self.assertEqual(
            lease_amounts(self.key, self.window), {"a": 4, "b": Decimal("2.75"), "c": 0}
        )

    def test_need_larger_than_available_grants_nothing(self) -> None:
        lease(self.key, self.window, "a", "1", "0.9")
        self.assertEqual(lease(self.key, self.window, "b", "1", "0.5", "0.2")[:2], (0, 0))
        self.assertEqual(
            lease(self.key, self.window, "b", "1", "0.5", "0.1")[:2], (Decimal("0.1"),) * 2
        )

    def test_negative_want_gives_back(self) -> None:
        lease(self.key, self.window, "a", "10", "10")
        share, granted, _ = lease(self.key, self.window, "a", "10", "-6.5")
        self.assertEqual((share, granted), (Decimal("3.5"), Decimal("-6.5")))
        self.assertEqual(lease(self.key, self.window, "b", "10", "100")[:2], (6.5, 6.5))

    def test_expired_leases_of_others_are_reclaimed(self) -> None:
        """Another holder's expired lease is dropped (and its share granted); one's own is kept."""
        lease(self.key, self.window, "gone", "10", "7", ttl=-1)
        lease(self.key, self.window, "me", "10", "2", ttl=-1)
        # Both expired: gone's 7 are free again, my own 2 are still mine.
        self.assertEqual(lease(self.key, self.window, "me", "10", "100")[:2], (10, 8))
        self.assertEqual(lease_amounts(self.key, self.window), {"me": 10})
        (leases,) = support.run_sql("SELECT leases FROM policy_windows")[0]
        self.assertGreater(leases["me"]["x"], datetime.now(UTC).timestamp() + 50)
        # Now live again, my lease is not another's to take.
        self.assertEqual(lease(self.key, self.window, "other", "10", "1")[:2], (0, 0))
        lease(self.key, self.window, "me", "10", "-3", ttl=-1)
        self.assertEqual(lease(self.key, self.window, "other", "10", "100")[:2], (10, 10))
        self.assertEqual(lease_amounts(self.key, self.window), {"other": 10})

    def test_base_resets_the_holders_share(self) -> None:
        """A holder that lost track says what it still holds; the rest is free again."""
        lease(self.key, self.window, "a", "10", "6")
        self.assertEqual(lease(self.key, self.window, "a", "10", "1", base="2")[:2], (3, 1))
        self.assertEqual(lease(self.key, self.window, "b", "10", "100")[:2], (7, 7))

    def test_racing_grants_never_exceed_the_limit(self) -> None:
        """
        8 connections, 200 lease calls each (grants, gives back, some with a
        need), on one window none of them has created yet: the leases and spent
        end at exactly the limit, and each holder's lease is the sum of its grants.
        """
        self.spend("7.5")
        limit = Decimal("50")
        granted: dict[str, Decimal] = defaultdict(Decimal)
        failures: list[BaseException] = []

        def race(holder: str, seed: int) -> None:
            rng = random.Random(seed)
            connection = connect()
            try:
                with connection.cursor() as cursor:
                    for i in range(200):
                        giving_back = i % 7 == 0 and i < 150  # the last calls only ask
                        want = (
                            -EXACT.divide(granted[holder], 2)
                            if giving_back
                            else random_cost(rng) % 1
                        )
                        need = EXACT.divide(want, 2) if i % 3 == 0 and want > 0 else Decimal(0)
                        share, given, _ = lease(
                            self.key,
                            self.window,
                            holder,
                            str(limit),
                            str(want),
                            str(need),
                            cursor=cursor,
                        )
                        granted[holder] = EXACT.add(granted[holder], given)
                        assert share == granted[holder], (share, granted[holder])
            except BaseException as e:
                failures.append(e)
            finally:
                connection.close()

        racers = [threading.Thread(target=race, args=(f"gw-{n}", n)) for n in range(8)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        self.assertEqual(failures, [])
        leases = lease_amounts(self.key, self.window)
        self.assertEqual(leases, dict(granted))
        (spent,) = support.run_sql("SELECT spent FROM policy_windows")[0]
        self.assertLessEqual(sum(leases.values()) + spent, limit)
        # The last grants without a need took whatever was left: the limit is reached.
        self.assertEqual(sum(leases.values()) + spent, limit)


# Instants on both sides of a Sunday/Monday, a day's and a month's end.
EDGES = [
    datetime(2025, 3, 30, 23, 59, 59, 500000, tzinfo=UTC),
    datetime(2025, 3, 31, 0, 0, 0, 200000, tzinfo=UTC),
    datetime(2025, 3, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2025, 4, 1, 0, 0, tzinfo=UTC),
    datetime(2025, 4, 1, 12, 0, tzinfo=UTC),
]


class BatchChargeTests(SynchronousTestCase):
    """The batch statement keeps spent = SUM(total_cost) and charges the right lease."""

    def setUp(self) -> None:
        support.fresh_database()
        self.day_key, self.month_key, self.week_key = new_key(), new_key(), new_key()
        self.plain_key, self.rate_key = new_key(), new_key()
        set_budget(self.day_key, "100", "day")
        set_budget(self.month_key, "100", "month", per="User-Id")
        set_budget(self.week_key, "100", "week", per="Team")
        support.run_sql(
            "INSERT INTO key_policies (majordomo_api_key_id, rpm) VALUES (%s, 60)",
            (self.rate_key,),
        )
        self.budgets = {self.day_key: ("day", None), self.month_key: ("month", "User-Id")}
        self.budgets[self.week_key] = ("week", "Team")

    def random_batches(self, rng: random.Random) -> list[list[dict[str, Any]]]:
        keys = [self.day_key, self.month_key, self.week_key, self.plain_key, self.rate_key, None]
        batches = []
        for _ in range(60):
            holder = rng.choice(["gw-a", "gw-b", None])
            batch = []
            for _ in range(rng.randint(1, 15)):
                at = rng.choice(EDGES) + timedelta(microseconds=rng.randint(-900000, 900000))
                metadata = {}
                if rng.random() < 0.6:
                    metadata["User-Id"] = rng.choice(["u1", "u2", "ü3"])
                if rng.random() < 0.5:
                    metadata["Team"] = rng.choice(["red", "blue"])
                cost = random_cost(rng) if rng.random() < 0.8 else None
                batch.append(record(rng.choice(keys), at, cost, metadata, holder))
            batches.append(batch)
        return batches

    def expected(self, batches: list[list[dict[str, Any]]]) -> dict[WindowKey, Decimal]:
        """Each budgeted window's spend, summed here from the records."""
        spent: dict[WindowKey, Decimal] = defaultdict(Decimal)
        for r in (r for batch in batches for r in batch):
            if r["majordomo_api_key_id"] in self.budgets and r["total_cost"] is not None:
                kind, per = self.budgets[r["majordomo_api_key_id"]]
                bucket = r["raw_metadata"].get(per, "") if per else ""
                start = window_at(kind, datetime.fromisoformat(r["created_at"])).start
                key = (r["majordomo_api_key_id"], bucket, kind, start)
                spent[key] = EXACT.add(spent[key], Decimal(r["total_cost"]))
        return spent

    def charged(self, batches: list[list[dict[str, Any]]], window: WindowKey, holder: str) -> Any:
        """What the records of C{holder} cost in C{window}."""
        return sum(
            (
                Decimal(r["total_cost"])
                for batch in batches
                for r in batch
                if r.get("lease_holder") == holder
                and r["total_cost"] is not None
                and r["majordomo_api_key_id"] == window[0]
                and (r["raw_metadata"].get("User-Id", "") if window[2] == "month" else "")
                == window[1]
                and window_at(window[2], datetime.fromisoformat(r["created_at"])).start == window[3]
            ),
            Decimal(0),
        )

    def state(self) -> tuple[Any, ...]:
        return windows(), support.run_sql("SELECT id::text, request_count FROM api_keys ORDER BY 1")

    def test_random_batches_and_replays(self) -> None:
        """
        60 random batches (costs with up to 20 decimals, NULL costs, rows without
        a key, keys without a budget, --per buckets with and without the header,
        batches across window edges): every window's spent is the exact sum of
        its rows, each holder's lease lost exactly what its rows cost, the other
        holder's nothing; replaying every batch, in any grouping, changes nothing.
        """
        leased = [
            (self.day_key, "", "day", datetime(2025, 3, 31, tzinfo=UTC)),
            (self.month_key, "u1", "month", datetime(2025, 3, 1, tzinfo=UTC)),
            (self.month_key, "", "month", datetime(2025, 4, 1, tzinfo=UTC)),
        ]
        for key_id, bucket, kind, start in leased:
            for holder in ("gw-a", "gw-b"):
                lease(key_id, start, holder, "1000", "100", ttl=3600, bucket=bucket, kind=kind)
        batches = self.random_batches(random.Random(1414))
        for batch in batches:
            insert_batch(batch)

        expected = self.expected(batches)
        found = windows()
        self.assertEqual({k: spent for k, (spent, _) in found.items() if spent}, expected)
        self.assertEqual({k[0] for k in found} - set(self.budgets), set())
        self.assertGreater(len(expected), 10)  # the batches did reach many windows
        # The same, summed by PostgreSQL over the rows it holds.
        disagreeing = support.run_sql(
            "SELECT w.* FROM policy_windows w JOIN key_policies p USING (majordomo_api_key_id) "
            "WHERE w.spent <> coalesce((SELECT sum(r.total_cost) FROM llm_requests r "
            "  WHERE r.majordomo_api_key_id = w.majordomo_api_key_id "
            "  AND coalesce(r.raw_metadata->>p.per_metadata, '') = w.bucket "
            "  AND majordomo_window_start(w.kind, r.created_at) = w.window_start), 0)"
        )
        self.assertEqual(disagreeing, [])
        for window in leased:
            amounts = lease_amounts(window[0], window[3], window[1], window[2])
            for holder in ("gw-a", "gw-b"):
                self.assertEqual(amounts[holder], 100 - self.charged(batches, window, holder))
        self.assertNotEqual(lease_amounts(self.day_key, leased[0][3])["gw-a"], 100)

        counts: dict[str | None, int] = defaultdict(int)
        for r in (r for batch in batches for r in batch):
            counts[r["majordomo_api_key_id"]] += 1
        for key_id, count in support.run_sql("SELECT id::text, request_count FROM api_keys"):
            self.assertEqual(count, counts[key_id])

        before = self.state()
        rng = random.Random(7)
        for batch in rng.sample(batches, len(batches)):
            insert_batch(batch)
        merged = [r for batch in batches[:20] for r in batch]
        insert_batch(rng.sample(merged, len(merged)))
        self.assertEqual(self.state(), before)

    def test_rows_without_a_holder_charge_no_lease(self) -> None:
        start = datetime(2025, 3, 31, tzinfo=UTC)
        lease(self.day_key, start, "gw-a", "10", "4", ttl=3600)
        insert_batch([record(self.day_key, EDGES[2], Decimal("0.125"))])
        insert_batch([record(self.day_key, EDGES[2], Decimal("0.5"), holder="gw-b")])
        self.assertEqual(lease_amounts(self.day_key, start), {"gw-a": 4})
        self.assertEqual(windows()[(self.day_key, "", "day", start)][0], Decimal("0.625"))


def counted(key_id: str, kind: str) -> dict[str, Decimal]:
    """The current window's spent per bucket, as policy_windows holds it (zeros left out)."""
    rows = support.run_sql(
        "SELECT bucket, spent FROM policy_windows WHERE majordomo_api_key_id = %s AND kind = %s "
        "AND window_start = majordomo_window_start(%s, now()) AND spent <> 0",
        (key_id, kind, kind),
    )
    return {bucket: Decimal(spent) for bucket, spent in rows}


def summed(key_id: str, kind: str, per: str | None) -> dict[str, Decimal]:
    """The current window's SUM(total_cost) per bucket, from the rows (zeros left out)."""
    rows = support.run_sql(
        "SELECT coalesce(raw_metadata->>%s, ''), sum(total_cost) FROM llm_requests "
        "WHERE majordomo_api_key_id = %s "
        "AND majordomo_window_start(%s, created_at) = majordomo_window_start(%s, now()) "
        "GROUP BY 1 HAVING coalesce(sum(total_cost), 0) <> 0",
        (per or "", key_id, kind, kind),
    )
    return {bucket: Decimal(total) for bucket, total in rows}


def recent_batch(key_id: str, rng: random.Random, size: int) -> list[dict[str, Any]]:
    """Records of requests arriving now, some of users u1/u2, some without the header."""
    batch = []
    for _ in range(size):
        metadata = {"User-Id": rng.choice(["u1", "u2"])} if rng.random() < 0.7 else {}
        cost = random_cost(rng) if rng.random() < 0.85 else None
        batch.append(record(key_id, datetime.now(UTC), cost, metadata, rng.choice(["gw", None])))
    return batch


class RecountTests(TestCase):
    """PolicyStore.change recounts the current window from the rows, batches or not."""

    def setUp(self) -> defer.Deferred[None]:
        support.fresh_database()
        self.key = new_key()
        self.db = Database(support.pg_config(), pool_size=2)
        self.addCleanup(self.db.close)
        self.store = PolicyStore(self.db)
        return self.db.start()

    def test_rows_before_the_budget_are_counted(self) -> defer.Deferred[None]:
        """
        Rows stored before the key had a budget (this window's and older ones)
        are counted by the recount, per bucket; changing --per, the period or
        the amount recounts; rows after it are counted by the batch statement.
        """

        async def go() -> None:
            rng = random.Random(3)
            insert_batch(recent_batch(self.key, rng, 40))
            old = datetime.now(UTC) - timedelta(days=40)
            insert_batch([record(self.key, old, Decimal("9.5"), {"User-Id": "u1"})])
            self.assertEqual(windows(), {})

            await self.store.change(self.key, {"budget_usd": Decimal("5"), "budget_period": "day"})
            self.assertEqual(list(counted(self.key, "day")), [""])
            self.assertEqual(counted(self.key, "day"), summed(self.key, "day", None))
            await self.store.change(self.key, {"per_metadata": "user-id"})
            self.assertEqual(set(counted(self.key, "day")), {"", "u1", "u2"})
            self.assertEqual(counted(self.key, "day"), summed(self.key, "day", "User-Id"))
            await self.store.change(self.key, {"budget_period": "month"})
            self.assertEqual(counted(self.key, "month"), summed(self.key, "month", "User-Id"))
            insert_batch(recent_batch(self.key, rng, 30))
            await self.store.change(self.key, {"budget_usd": Decimal("7.25")})
            self.assertEqual(counted(self.key, "month"), summed(self.key, "month", "User-Id"))
            insert_batch(recent_batch(self.key, rng, 30))
            self.assertEqual(counted(self.key, "month"), summed(self.key, "month", "User-Id"))
            self.assertNotIn(Decimal("9.5"), counted(self.key, "month").values())

        return support.as_deferred(go())

    def test_batches_during_changes_are_counted_once(self) -> defer.Deferred[None]:
        """
        A thread inserts batches in a loop while the policy changes again and
        again (budget set, --per, period, cleared, set again): afterwards spent
        is SUM(total_cost) of the window's rows, to the last decimal.
        """

        async def go() -> None:
            stop = threading.Event()
            inserted: list[int] = []
            failures: list[BaseException] = []

            def keep_inserting() -> None:
                rng = random.Random(5)
                connection = connect()
                try:
                    with connection.cursor() as cursor:
                        while not stop.is_set():
                            insert_batch(recent_batch(self.key, rng, rng.randint(1, 8)), cursor)
                            inserted.append(1)
                except BaseException as e:
                    failures.append(e)
                finally:
                    connection.close()

            inserting = threading.Thread(target=keep_inserting)
            inserting.start()
            self.addCleanup(stop.set)
            changes: list[dict[str, Any]] = [
                {"budget_usd": Decimal("3"), "budget_period": "day"},
                {"per_metadata": "User-Id"},
                {"budget_period": "month"},
                {"budget_usd": Decimal("4.5")},
                {"per_metadata": None},
                {"budget_period": "week", "per_metadata": "User-Id"},
            ]
            seen = []
            for change in changes * 2:
                await support.sleep(0.05)
                seen.append(len(inserted))
                await self.store.change(self.key, change)
                if change is changes[3]:
                    await self.store.clear(self.key, {"budget"})
                    await support.sleep(0.05)
                    await self.store.change(
                        self.key, {"budget_usd": Decimal("4.5"), "budget_period": "month"}
                    )
            await support.sleep(0.05)
            stop.set()
            await threads.deferToThread(inserting.join)
            self.assertEqual(failures, [])
            # Batches did arrive between (and so during) every change.
            self.assertEqual(len(set(seen)), len(seen))
            self.assertEqual(counted(self.key, "week"), summed(self.key, "week", "User-Id"))
            self.assertEqual(set(counted(self.key, "week")), {"", "u1", "u2"})

        return support.as_deferred(go())
