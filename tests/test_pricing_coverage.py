"""
C{majordomo pricing coverage}: the models the ledger holds with their
unpriced rows, counted by PostgreSQL, and the buckets the shipped price data
prices for each model, as a user runs the command.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import date
from decimal import Decimal
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase, TestCase

from majordomo.cli.coverage import seen_query, table_model
from majordomo.pricing.prices import ModelPrice, PriceTier
from tests import support
from tests.test_cli import majordomo

INSERT = """
INSERT INTO llm_requests (id, created_at, provider, method, path, usage_status, model,
    total_cost, pricing_key)
VALUES (%s, %s, %s, 'POST', '/v1/x', %s, %s, %s, %s)
"""

# (day, provider, status, model, total_cost, pricing_key), one row each.
ROWS: list[tuple[str, str, str, str | None, Decimal | None, str | None]] = [
    # A model no table knows, three rows, none priced.
    ("2026-11-01", "openai", "complete", "acme-model-1", None, None),
    ("2026-11-02", "openai", "complete", "acme-model-1", None, None),
    ("2026-11-20", "openai", "complete", "acme-model-1", None, None),
    # A retired model stored unpriced before the retired prices shipped.
    ("2026-11-03", "gemini", "complete", "gemini-2.0-flash", None, None),
    ("2026-11-21", "gemini", "complete", "gemini-2.0-flash", None, None),
    # Priced rows, one pending background answer (priced model, cost unknown)
    # and an error the provider did not bill (cost 0: not unpriced).
    ("2026-11-21", "openai", "complete", "gpt-5-2025-08-07", Decimal("0.01"), "gpt-5-2025-08-07"),
    ("2026-11-22", "openai", "complete", "gpt-5-2025-08-07", Decimal("0.02"), "gpt-5-2025-08-07"),
    ("2026-11-22", "openai", "pending_background", "gpt-5-2025-08-07", None, "gpt-5-2025-08-07"),
    ("2026-11-22", "openai", "error_not_billed", "gpt-5-2025-08-07", Decimal(0), None),
    (
        "2026-11-22",
        "anthropic",
        "complete",
        "claude-sonnet-4-5",
        Decimal("0.5"),
        "claude-sonnet-4-5",
    ),
    # No model at all (a request that never named one).
    ("2026-11-23", "anthropic", "unknown", None, None, None),
]


def seed() -> None:
    support.fresh_database()
    for n, (day, provider, status, model, cost, key) in enumerate(ROWS):
        row_id = f"018f0000-0000-7000-8000-{n:012d}"
        support.run_sql(INSERT, (row_id, day, provider, status, model, cost, key))


def seen_section(out: str) -> list[list[str]]:
    """The first list of the text output, as rows of cells (header included)."""
    lines = out.split("\n\n")[0].splitlines()[1:-1]  # past the title, before the summary
    return [line.split() for line in lines]


class CoverageCommandTests(TestCase):
    """The command as a user runs it, on the test database."""

    def setUp(self) -> None:
        seed()
        self.overrides = os.path.abspath(self.mktemp())
        with open(self.overrides, "w") as f:
            f.write("acme-model-1:\n  input: 2\n  output: 8\n")

    def test_seen_models(self) -> defer.Deferred[None]:
        """
        Each (provider, model) with its rows, its rows without a cost (a
        billed error is not one), those stored with no price, and the key it
        is priced under now; most unpriced first.
        """

        async def go() -> None:
            out, err, code = await majordomo("pricing", "coverage")
            self.assertEqual((err, code), ("", 0))
            self.assertTrue(out.startswith("Models seen in llm_requests:\n"), out[:200])
            self.assertEqual(
                seen_section(out),
                [
                    [
                        "PROVIDER",
                        "MODEL",
                        "REQUESTS",
                        "UNPRICED",
                        "NO",
                        "PRICE",
                        "PRICED",
                        "NOW",
                        "AS",
                    ],
                    ["openai", "acme-model-1", "3", "3", "3", "-"],
                    ["gemini", "gemini-2.0-flash", "2", "2", "2", "gemini-2.0-flash"],
                    ["openai", "gpt-5-2025-08-07", "4", "1", "0", "gpt-5-2025-08-07"],
                    ["anthropic", "-", "1", "1", "1", "-"],
                    ["anthropic", "claude-sonnet-4-5", "1", "0", "0", "claude-sonnet-4-5"],
                ],
            )
            self.assertIn(
                "11 requests, 7 without a cost; 2 of those had no price then and have one now", out
            )

        return support.as_deferred(go())

    def test_overrides_count_as_priced_now(self) -> defer.Deferred[None]:
        """The operator's overrides file is part of today's book: the model shows its key."""

        async def go() -> None:
            out, _, code = await majordomo(
                "pricing", "coverage", MAJORDOMO_PRICING_OVERRIDES_FILE=self.overrides
            )
            self.assertEqual(code, 0)
            self.assertIn(
                ["openai", "acme-model-1", "3", "3", "3", "acme-model-1"], seen_section(out)
            )

        return support.as_deferred(go())

    def test_since(self) -> defer.Deferred[None]:
        """--since counts only the rows that arrived on or after that day (UTC)."""

        async def go() -> None:
            out, _, code = await majordomo("pricing", "coverage", "--since", "2026-11-20")
            self.assertEqual(code, 0)
            self.assertTrue(out.startswith("Models seen in llm_requests since 2026-11-20:\n"))
            rows = {(r[0], r[1]): r[2:5] for r in seen_section(out)[1:]}
            self.assertEqual(rows["openai", "acme-model-1"], ["1", "1", "1"])
            self.assertEqual(rows["gemini", "gemini-2.0-flash"], ["1", "1", "1"])
            out, _, _ = await majordomo("pricing", "coverage", "--since", "2027-01-01")
            self.assertTrue(
                out.startswith("Models seen in llm_requests since 2027-01-01:\n  (no requests)\n")
            )

        return support.as_deferred(go())

    def test_bad_date(self) -> defer.Deferred[None]:
        """A --since that is not YYYY-MM-DD is one error line and exit status 2."""

        async def go() -> None:
            for value in ("last week", "2026-13-01", "20261101"):
                out, err, code = await majordomo("pricing", "coverage", "--since", value)
                self.assertEqual((out, code), ("", 2), value)
                self.assertEqual(
                    err.splitlines()[0], f"majordomo: --since: not a date (YYYY-MM-DD): {value}"
                )

        return support.as_deferred(go())

    def test_price_table(self) -> defer.Deferred[None]:
        """
        The shipped models with their buckets: Claude Sonnet 4.5's cache
        writes and >200k tier, GPT-5's flex and priority prices, audio for
        gpt-4o-audio-preview, and gemini-2.0-flash as a retired model's price.
        """

        async def go() -> None:
            out, _, code = await majordomo("pricing", "coverage", "--json")
            self.assertEqual(code, 0)
            document = json.loads(out)
            table = {(m["provider"], m["model"]): m for m in document["price_table"]}
            sonnet = table["anthropic", "claude-sonnet-4-5"]
            self.assertEqual(sonnet["cache"], ["read", "write-5m", "write-1h"])
            self.assertEqual(sonnet["long_context"], [">200k"])
            self.assertFalse(sonnet["retired"])
            self.assertTrue({"flex", "priority"} <= set(table["openai", "gpt-5"]["service_tiers"]))
            self.assertEqual(table["openai", "gpt-4o-audio-preview"]["audio"], ["in", "out"])
            self.assertTrue(table["gemini", "gemini-2.0-flash"]["retired"])
            self.assertEqual(
                {m["provider"] for m in document["price_table"]},
                {"openai", "azure", "anthropic", "gemini"},
            )
            seen = {(s["provider"], s["model"]): s for s in document["seen"]}
            self.assertEqual(
                seen["openai", "gpt-5-2025-08-07"],
                {
                    "provider": "openai",
                    "model": "gpt-5-2025-08-07",
                    "requests": 4,
                    "unpriced": 1,
                    "no_price": 0,
                    "price_now": "gpt-5-2025-08-07",
                },
            )
            text, _, _ = await majordomo("pricing", "coverage")
            self.assertRegex(
                text, r"\nanthropic +claude-sonnet-4-5 +read,write-5m,write-1h +>200k +\S+ +- *\n"
            )
            self.assertRegex(text, r"\ngemini +gemini-2.0-flash .* retired: last known price\n")
            self.assertRegex(text, r"\nanthropic: \d+ models, \d+ with cache prices, ")

        return support.as_deferred(go())


class QueryPlanTests(TestCase):
    """The ledger is read by one aggregating query, through the created_at index with --since."""

    def test_since_uses_index(self) -> None:
        """
        Over 200,000 rows spread across a year, the --since query for the last
        day reads the created_at index's range, not the whole table, and
        aggregates in PostgreSQL.
        """
        support.fresh_database()
        support.run_sql(
            "INSERT INTO llm_requests (id, created_at, provider, method, path, usage_status, model)"
            " SELECT gen_random_uuid(), timestamptz '2026-01-01' + n * interval '157 seconds',"
            " 'openai', 'POST', '/v1/x', 'complete', 'm' || (n % 50)"
            " FROM generate_series(1, 200000) n"
        )
        support.run_sql("ANALYZE llm_requests")

        sql, params = seen_query(date(2026, 12, 31))
        (plan,) = support.run_sql("EXPLAIN (FORMAT JSON) " + sql, params)[0]
        text = json.dumps(plan)
        self.assertIn("llm_requests_created_at_idx", text)
        self.assertIn("Aggregate", text)
        self.assertNotIn("Seq Scan", text)


def price(**fields: str) -> ModelPrice:
    """A ModelPrice of the given per-token prices."""
    prices: dict[str, Any] = {name: Decimal(value) for name, value in fields.items()}
    return ModelPrice(**prices)


class TableModelTests(SynchronousTestCase):
    """The buckets are read generically from a ModelPrice's fields, tiers and service tiers."""

    def test_buckets(self) -> None:
        """Cache and audio fields, tier thresholds and service tier names are listed."""
        base = price(
            input="1", output="2", cached_input="0.1", cache_write="1.25", output_audio="8"
        )
        tier = PriceTier(
            200_000,
            price(input="2", output="4", cached_input="0.2", cache_write="2.5", output_audio="16"),
        )
        flex = price(input="0.5", output="1")
        model = table_model(
            "openai",
            "m",
            replace(base, tiers=(tier,), service_tiers=(("flex", flex),)),
            False,
        )
        self.assertEqual(
            (model.cache, model.long_context, model.service_tiers, model.audio),
            (("read", "write"), (">200k",), ("flex",), ("out",)),
        )

    def test_partial_tier(self) -> None:
        """A tier that sets fewer buckets than the base (the rest at base price) names its own."""
        base = price(input="1", output="2", cached_input="0.1")
        tiers = (
            PriceTier(128_000, price(input="2", output="4")),
            PriceTier(1_500, price(input="3")),
        )
        model = table_model("gemini", "m", replace(base, tiers=tiers), True)
        self.assertEqual(model.long_context, (">128k(in+out)", ">1500(in)"))
        self.assertTrue(model.retired)

    def test_no_extra_buckets(self) -> None:
        """A model with only input and output prices has empty buckets."""
        model = table_model("openai", "m", price(input="1", output="2"), False)
        self.assertEqual(
            (model.cache, model.long_context, model.service_tiers, model.audio), ((),) * 4
        )
