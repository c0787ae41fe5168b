"""
C{majordomo keys policy set|show|clear} and C{majordomo usage --budgets}: the
real command in its own process against the test database, its output read
as a user reads it and checked against the tables (and the rows) themselves.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg2
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from majordomo.cli.budgets import BudgetUse
from majordomo.cli.policy import money
from majordomo.db.keys import KEYS_CHANNEL
from majordomo.ledger.statement import INSERT_BATCH
from majordomo.policy.rules import window_at
from tests import support
from tests.test_cli import KEY_CREATED, majordomo

POLICY_COLUMNS = (
    "budget_usd, budget_period, per_metadata, allow_models, deny_models, allow_unpriced, rpm, tpm"
)


async def create_key(name: str) -> str:
    """A key made by `majordomo keys create`; returns its id."""
    out, err, code = await majordomo("keys", "create", "--name", name)
    match = KEY_CREATED.match(out)
    assert (err, code) == ("", 0) and match is not None, (out, err, code)
    return match["id"]


def policy_row(key_id: str) -> tuple[Any, ...] | None:
    rows = support.run_sql(
        f"SELECT {POLICY_COLUMNS} FROM key_policies WHERE majordomo_api_key_id = %s", (key_id,)
    )
    return rows[0] if rows else None


def in_window(kind: str, seconds: int = 1) -> datetime:
    """A moment inside the current window of C{kind}, whatever the time of day."""
    return window_at(kind, datetime.now(UTC)).start + timedelta(seconds=seconds)


def insert_request(key_id: str, at: datetime, cost: str, metadata: dict[str, str]) -> None:
    """An llm_requests row written by SQL, as if a gateway had recorded it earlier."""
    support.run_sql(
        "INSERT INTO llm_requests (id, created_at, majordomo_api_key_id, provider, method, path,"
        " model, total_cost, usage_status, raw_metadata)"
        " VALUES (%s, %s, %s, 'openai', 'POST', '/v1/chat/completions', 'gpt-4o', %s,"
        " 'complete', %s)",
        (str(uuid.uuid4()), at, key_id, Decimal(cost), json.dumps(metadata)),
    )


def insert_batch(key_id: str, at: datetime, cost: str, metadata: dict[str, str]) -> None:
    """One row through the log writer's own batch statement (which keeps spent)."""
    record = {
        "id": str(uuid.uuid4()),
        "created_at": at.isoformat(),
        "majordomo_api_key_id": key_id,
        "provider": "openai",
        "method": "POST",
        "path": "/v1/chat/completions",
        "stream": False,
        "model": "gpt-4o",
        "usage_status": "complete",
        "total_cost": cost,
        "raw_metadata": metadata,
        "indexed_metadata": {},
    }
    support.run_sql(INSERT_BATCH, (json.dumps([record]),))


def add_lease(key_id: str, bucket: str, kind: str, holder: str, amount: str, ttl: float) -> None:
    """A running gateway's lease on the current window (expired when C{ttl} < 0)."""
    lease = json.dumps({holder: {"a": amount, "x": time.time() + ttl}})
    support.run_sql(
        "INSERT INTO policy_windows AS w (majordomo_api_key_id, bucket, kind, window_start, leases)"
        " VALUES (%s, %s, %s, majordomo_window_start(%s, now()), %s::jsonb)"
        " ON CONFLICT (majordomo_api_key_id, bucket, kind, window_start)"
        " DO UPDATE SET leases = w.leases || excluded.leases",
        (key_id, bucket, kind, kind, lease),
    )


async def clear_of_window_end(kind: str, margin: float) -> None:
    """Wait for the next window of C{kind} if the current one ends within C{margin} seconds."""
    left = window_at(kind, datetime.now(UTC)).seconds_left(datetime.now(UTC))
    if left < margin:
        await support.sleep(left + 0.5)


def window_line(kind: str) -> str:
    window = window_at(kind, datetime.now(UTC))
    if window.end is None:
        return "all time"
    return f"{window.start:%Y-%m-%d %H:%M:%S} to {window.end:%Y-%m-%d %H:%M:%S} UTC"


class MoneyTests(SynchronousTestCase):
    """Amounts are printed exactly: cents at least, every digit they have, never a float."""

    def test_money(self) -> None:
        for amount, text in [
            ("12.5", "$12.50"),
            ("50", "$50.00"),
            ("0", "$0.00"),
            ("0E-10", "$0.00"),
            ("0.00027", "$0.00027"),
            ("0.00000075", "$0.00000075"),
            ("1E+3", "$1000.00"),
            ("12.4997300", "$12.49973"),
            ("-0.1", "-$0.10"),
        ]:
            self.assertEqual(money(Decimal(amount)), text, amount)

    def test_percent_used(self) -> None:
        """Spent over budget, to a tenth of a percent (half up); none for a $0 budget."""
        start = datetime(2026, 3, 1, tzinfo=UTC)

        def use(spent: str, budget: str) -> BudgetUse:
            return BudgetUse("k", "id", "day", None, "", start, Decimal(spent), Decimal(0),
                             Decimal(budget))  # fmt: skip

        self.assertEqual(use("1", "8").percent_used, Decimal("12.5"))
        self.assertEqual(use("0.0005", "1").percent_used, Decimal("0.1"))
        self.assertEqual(use("3", "2").percent_used, Decimal("150.0"))
        self.assertIsNone(use("0", "0").percent_used)
        self.assertEqual(use("3", "2").remaining, Decimal(-1))


class PolicyCommandTests(TestCase):
    """set, show and clear as a user runs them."""

    def setUp(self) -> None:
        support.fresh_database()

    def test_set_show_clear_round_trip(self) -> defer.Deferred[None]:
        """
        `set` stores every rule given and prints the resulting policy; a
        second `set` changes only what it names; `show` prints the same
        rules; `clear --rpm` clears only that; `clear` clears the rest and
        removes the row.
        """

        async def go() -> None:
            key_id = await create_key("Team A")
            out, err, code = await majordomo(
                "keys", "policy", "set", key_id, "--budget", "$12.5", "--period", "month",
                "--per", "X-Majordomo-user-id", "--models", "gpt-4o*, claude-*-haiku-*",
                "--deny-models", "gpt-4o-realtime*", "--rpm", "600", "--tpm", "100000",
            )  # fmt: skip
            self.assertEqual((err, code), ("", 0))
            rules = (
                "  Budget:          $12.50 per month (UTC)\n"
                "  Unpriced models: refused\n"
                "  Allowed models:  gpt-4o*, claude-*-haiku-*\n"
                "  Denied models:   gpt-4o-realtime*\n"
                "  Requests/minute: 600\n"
                "  Tokens/minute:   100000\n"
                "  Limits apply to: each X-Majordomo-User-Id value\n"
            )
            self.assertEqual(
                out,
                f"Policy of API key {key_id} (Team A) set:\n\n{rules}\n"
                "Running gateways apply it within a second.\n",
            )
            self.assertEqual(
                policy_row(key_id),
                (Decimal("12.5"), "month", "User-Id", ["gpt-4o*", "claude-*-haiku-*"],
                 ["gpt-4o-realtime*"], False, 600, 100000),
            )  # fmt: skip

            out, err, code = await majordomo(
                "keys", "policy", "set", key_id, "--period", "day", "--allow-unpriced"
            )
            self.assertEqual((err, code), ("", 0))
            self.assertIn("  Budget:          $12.50 per day (UTC)\n", out)
            self.assertIn("  Unpriced models: allowed (not counted)\n", out)
            self.assertEqual(
                policy_row(key_id),
                (Decimal("12.5"), "day", "User-Id", ["gpt-4o*", "claude-*-haiku-*"],
                 ["gpt-4o-realtime*"], True, 600, 100000),
            )  # fmt: skip

            out, err, code = await majordomo("keys", "policy", "show", key_id)
            self.assertEqual((err, code), ("", 0))
            self.assertTrue(out.startswith(f"Policy of API key {key_id} (Team A):\n\n"), out)
            self.assertIn(rules.replace("month", "day").replace("refused", "allowed (not counted)"),
                          out)  # fmt: skip

            out, err, code = await majordomo("keys", "policy", "clear", key_id, "--rpm")
            self.assertEqual((err, code), ("", 0))
            self.assertTrue(out.startswith(f"Cleared rpm of API key {key_id} (Team A).\n"), out)
            self.assertIn("  Requests/minute: no limit\n", out)
            self.assertEqual(policy_row(key_id)[6:], (None, 100000))  # type: ignore[index]

            out, err, code = await majordomo("keys", "policy", "clear", key_id)
            self.assertEqual((err, code), ("", 0))
            self.assertEqual(
                out,
                f"Cleared every rule of API key {key_id} (Team A).\n"
                "It has no policy now: no budget, model rules or rate limits.\n\n"
                "Running gateways apply it within a second.\n",
            )
            self.assertIsNone(policy_row(key_id))
            out, err, code = await majordomo("keys", "policy", "show", key_id)
            self.assertEqual(
                (out, err, code),
                (
                    f"API key {key_id} (Team A) has no policy: no budget, model rules or "
                    "rate limits.\n",
                    "",
                    0,
                ),
            )

        return support.as_deferred(go())

    def test_clear_budget_keeps_other_rules(self) -> defer.Deferred[None]:
        """`clear --budget --models` keeps the deny list and the rate, still per User-Id."""

        async def go() -> None:
            key_id = await create_key("Team B")
            _, err, code = await majordomo(
                "keys", "policy", "set", key_id, "--budget", "5", "--period", "week",
                "--per", "User-Id", "--models", "gpt-*", "--deny-models", "gpt-3*", "--rpm", "10",
            )  # fmt: skip
            self.assertEqual((err, code), ("", 0))
            out, err, code = await majordomo(
                "keys", "policy", "clear", key_id, "--budget", "--models"
            )
            self.assertEqual((err, code), ("", 0))
            self.assertTrue(out.startswith(f"Cleared budget, models of API key {key_id}"), out)
            self.assertEqual(
                policy_row(key_id), (None, None, "User-Id", None, ["gpt-3*"], False, 10, None)
            )
            out, err, code = await majordomo("keys", "policy", "set", key_id, "--allow-unpriced")
            self.assertEqual((err, code), ("", 0))
            self.assertIn("Note: unpriced models are refused only on a key with a budget.\n", out)

        return support.as_deferred(go())

    def test_validation_errors(self) -> defer.Deferred[None]:
        """
        Every bad value is one clear line (and the help pointer) on stderr,
        exit 2, nothing on stdout, and the stored policy unchanged.
        """

        async def go() -> None:
            key_id = await create_key("Strict")
            _, err, code = await majordomo("keys", "policy", "set", key_id, "--rpm", "60")
            self.assertEqual((err, code), ("", 0))
            before = policy_row(key_id)
            cases = [
                (["--budget", "ten", "--period", "day"], "--budget must be an amount in USD"),
                (["--budget", "-1", "--period", "day"], "--budget must be between 0 and"),
                (["--budget", "NaN", "--period", "day"], "--budget must be between 0 and"),
                (["--budget", "1e12", "--period", "day"], "--budget must be between 0 and"),
                (["--budget", "10"], "a budget needs both --budget USD and --period"),
                (["--period", "day"], "a budget needs both --budget USD and --period"),
                (["--budget", "10", "--period", "year"], "--period must be one of day, week"),
                (["--per", "User Id"], "--per: Metadata header name"),
                (["--per", ""], "--per: Metadata header name"),
                (["--per", "Key"], "--per: X-Majordomo-Key steers the gateway"),
                (["--models", ""], "give at least one model pattern"),
                (["--deny-models", " , ,"], "give at least one model pattern"),
                (["--rpm", "0"], "--rpm must be between 1 and"),
                (["--tpm", "-5"], "--tpm must be between 1 and"),
                (["--rpm", "lots"], "--rpm must be a whole number"),
                (["--allow-unpriced", "--deny-unpriced"], "give --allow-unpriced or"),
                ([], "keys policy set needs at least one rule"),
            ]
            for args, message in cases:
                out, err, code = await majordomo("keys", "policy", "set", key_id, *args)
                self.assertEqual((out, code), ("", 2), args)
                self.assertTrue(err.startswith(f"majordomo: {message}"), (args, err))
                self.assertEqual(err.count("\n"), 2, err)  # the line and "(see majordomo --help)"
                self.assertNotIn("Traceback", err)
            self.assertEqual(policy_row(key_id), before)
            for args in (["frobnicate", key_id], ["show"], ["show", key_id, "extra"], []):
                out, err, code = await majordomo("keys", "policy", *args)
                self.assertEqual((out, code), ("", 2), args)
                self.assertTrue(err.startswith("majordomo: "), err)

        return support.as_deferred(go())

    def test_unknown_key(self) -> defer.Deferred[None]:
        """A key id that names no key (or is no UUID at all): one line, exit 1."""

        async def go() -> None:
            missing = str(uuid.uuid4())
            for command in (["set", missing, "--rpm", "5"], ["show", missing], ["clear", missing]):
                out, err, code = await majordomo("keys", "policy", *command)
                self.assertEqual(
                    (out, err, code), ("", f"majordomo: no API key with id {missing}\n", 1)
                )
            out, err, code = await majordomo("keys", "policy", "show", "not-a-uuid")
            self.assertEqual(
                (out, err, code), ("", "majordomo: no API key with id not-a-uuid\n", 1)
            )
            self.assertEqual(support.run_sql("SELECT count(*) FROM key_policies"), [(0,)])

        return support.as_deferred(go())

    def test_set_and_clear_notify_gateways(self) -> defer.Deferred[None]:
        """Each change NOTIFYs the key channel with the key's id, as revocation does."""

        async def go() -> None:
            key_id = await create_key("Watched")
            listener = psycopg2.connect(**support.pg_config().dsn_parameters())
            listener.autocommit = True
            self.addCleanup(listener.close)
            listener.cursor().execute(f"LISTEN {KEYS_CHANNEL}")
            for command in (["set", key_id, "--models", "gpt-4o*"], ["clear", key_id]):
                _, err, code = await majordomo("keys", "policy", *command)
                self.assertEqual((err, code), ("", 0))
                listener.poll()
                self.assertEqual(
                    [(n.channel, n.payload) for n in listener.notifies], [(KEYS_CHANNEL, key_id)]
                )
                listener.notifies.clear()
            # A refused change notifies nobody.
            await majordomo("keys", "policy", "set", key_id, "--rpm", "0")
            listener.poll()
            self.assertEqual(listener.notifies, [])

        return support.as_deferred(go())


class SpendTests(TestCase):
    """`show` and `usage --budgets` on windows that have rows, spend and leases."""

    def setUp(self) -> None:
        support.fresh_database()

    async def _budgeted(self) -> str:
        """
        A key with rows in today's window (alice, bob, none) and yesterday's,
        then a daily $2 budget per User-Id (which recounts the window from
        the rows), then a row through the batch statement and some leases.
        """
        await clear_of_window_end("day", 60)
        key_id = await create_key("Customers")
        insert_request(key_id, in_window("day", 1), "0.25", {"User-Id": "alice"})
        insert_request(key_id, in_window("day", 2), "0.00000075", {"User-Id": "alice"})
        insert_request(key_id, in_window("day", 3), "1.5", {"User-Id": "bob"})
        insert_request(key_id, in_window("day", 4), "0.01", {})
        insert_request(key_id, in_window("day", -3600), "7", {"User-Id": "alice"})  # yesterday
        _, err, code = await majordomo(
            "keys", "policy", "set", key_id, "--budget", "2", "--period", "day",
            "--per", "User-Id", "--rpm", "100",
        )  # fmt: skip
        self.assertEqual((err, code), ("", 0))
        insert_batch(key_id, in_window("day", 5), "0.125", {"User-Id": "bob"})
        add_lease(key_id, "alice", "day", "gateway-1", "0.05", 60)
        add_lease(key_id, "alice", "day", "gateway-2", "9", -60)  # expired: not counted
        await clear_of_window_end("rpm", 15)  # the test reads this minute's lease
        add_lease(key_id, "", "rpm", "gateway-1", "7", 60)
        return key_id

    def test_show_spent_reserved_remaining(self) -> defer.Deferred[None]:
        """
        Each bucket's spent is exactly SUM(total_cost) of its rows in the
        window; reserved is the live leases; remaining is the rest.
        """

        async def go() -> None:
            key_id = await self._budgeted()
            out, err, code = await majordomo("keys", "policy", "show", key_id)
            self.assertEqual((err, code), ("", 0))
            sums = dict(
                support.run_sql(
                    "SELECT coalesce(raw_metadata->>'User-Id', ''), sum(total_cost)"
                    " FROM llm_requests WHERE created_at >= majordomo_window_start('day', now())"
                    " GROUP BY 1"
                )
            )
            self.assertEqual(
                sums,
                {"alice": Decimal("0.25000075"), "bob": Decimal("1.625"), "": Decimal("0.01")},
            )
            lines = out.splitlines()
            start = lines.index(f"Budget window (day): {window_line('day')}")
            table = [line.split() for line in lines[start + 1 : start + 5]]
            self.assertEqual(
                table,
                [
                    ["BUCKET", "SPENT", "RESERVED", "REMAINING"],
                    ["bob", "$1.625", "$0.00", "$0.375"],
                    ["alice", "$0.25000075", "$0.05", "$1.69999925"],
                    ["(no", "X-Majordomo-User-Id)", "$0.01", "$0.00", "$1.99"],
                ],
            )
            start = lines.index(f"This minute (requests, limit 100): {window_line('rpm')}")
            self.assertEqual(
                [line.split() for line in lines[start + 1 : start + 3]],
                [["BUCKET", "HELD", "REMAINING"], ["(no", "X-Majordomo-User-Id)", "7", "93"]],
            )

        return support.as_deferred(go())

    def test_usage_budgets(self) -> defer.Deferred[None]:
        """
        `usage --budgets` lists every budgeted key's buckets in the current
        window (a key with no spend yet too), exactly, in each format; the
        plain `usage` report is unchanged by it.
        """

        async def go() -> None:
            key_id = await self._budgeted()
            idle_id = await create_key("Idle")
            _, err, code = await majordomo(
                "keys", "policy", "set", idle_id, "--budget", "50", "--period", "month"
            )
            self.assertEqual((err, code), ("", 0))
            unbudgeted = await create_key("Rates only")
            await majordomo("keys", "policy", "set", unbudgeted, "--rpm", "5")

            out, err, code = await majordomo("usage", "--budgets", "--format", "json")
            self.assertEqual((err, code), ("", 0))
            day = window_at("day", datetime.now(UTC)).start.isoformat()
            month = window_at("month", datetime.now(UTC)).start.isoformat()

            def row(*values: Any) -> dict[str, Any]:
                fields = ("key_name", "key_id", "period", "per_metadata", "bucket",
                          "window_start", "spent", "reserved", "budget", "remaining",
                          "percent_used")  # fmt: skip
                return dict(zip(fields, values, strict=True))

            self.assertEqual(
                json.loads(out),
                [
                    row("Customers", key_id, "day", "User-Id", "bob", day, "1.625", "0", "2",
                        "0.375", "81.3"),
                    row("Customers", key_id, "day", "User-Id", "alice", day, "0.25000075",
                        "0.05", "2", "1.69999925", "12.5"),
                    row("Customers", key_id, "day", "User-Id", "", day, "0.01", "0", "2",
                        "1.99", "0.5"),
                    row("Idle", idle_id, "month", None, "", month, "0", "0", "50", "50", "0.0"),
                ],
            )  # fmt: skip

            out, err, code = await majordomo("usage", "--budgets")
            self.assertEqual((err, code), ("", 0))
            self.assertEqual(
                [line.split() for line in out.splitlines()],
                [
                    ["KEY", "KEY", "ID", "PERIOD", "BUCKET", "SPENT", "RESERVED", "BUDGET",
                     "REMAINING", "USED"],
                    ["Customers", key_id, "day", "bob", "$1.625", "$0.00", "$2.00", "$0.375",
                     "81.3%"],
                    ["Customers", key_id, "day", "alice", "$0.25000075", "$0.05", "$2.00",
                     "$1.69999925", "12.5%"],
                    ["Customers", key_id, "day", "(no", "X-Majordomo-User-Id)", "$0.01", "$0.00",
                     "$2.00", "$1.99", "0.5%"],
                    ["Idle", idle_id, "month", "(whole", "key)", "$0.00", "$0.00", "$50.00",
                     "$50.00", "0.0%"],
                ],
            )  # fmt: skip

            out, err, code = await majordomo("usage", "--budgets", "--format", "csv")
            self.assertEqual((err, code), ("", 0))
            self.assertEqual(out.splitlines()[0].split(",")[-1], "percent_used")
            self.assertIn(f"Idle,{idle_id},month,,,{month},0,0,50,50,0.0", out.splitlines())

            out, err, code = await majordomo("usage", "--format", "json")
            self.assertEqual((err, code), ("", 0))
            self.assertEqual(
                [(r["model"], r["requests"], r["total_cost"]) for r in json.loads(out)],
                [("gpt-4o", 6, "8.88500075")],
            )

        return support.as_deferred(go())

    def test_usage_budgets_empty_and_errors(self) -> defer.Deferred[None]:
        """No budget anywhere says how to set one; --budgets refuses the options it ignores."""

        async def go() -> None:
            out, err, code = await majordomo("usage", "--budgets")
            self.assertEqual((err, code), ("", 0))
            self.assertTrue(out.startswith("No key has a budget."), out)
            for args in (["--by", "key"], ["--since", "2026-01-01"], ["--until", "2026-01-01"]):
                out, err, code = await majordomo("usage", "--budgets", *args)
                self.assertEqual((out, code), ("", 2), args)
                self.assertTrue(err.startswith("majordomo: --budgets shows current windows"), err)

        return support.as_deferred(go())
