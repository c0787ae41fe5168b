"""`majordomo reprice`: stored costs recomputed from stored tokens, idempotently."""

from __future__ import annotations

import os
from decimal import Decimal

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from majordomo import pricing
from majordomo.pricing import BUNDLED_VERSION
from tests import support
from tests.test_cli import majordomo

INSERT = """
INSERT INTO llm_requests (id, created_at, provider, method, path, usage_status, model,
    input_tokens, output_tokens, cached_tokens,
    input_cost, output_cost, total_cost, pricing_key, pricing_tier, price_source)
VALUES (%s, %s, 'openai', 'POST', '/v1/chat/completions', %s, %s, %s, %s, 0,
    %s, %s, %s, %s, %s, %s)
"""
MINI = "gpt-4o-mini-2024-07-18"


class RepriceTests(TestCase):
    """Rows priced with old (or no) prices get today's."""

    def setUp(self) -> None:
        support.fresh_database()
        zero = Decimal(0)
        rows = [
            # An unknown model at the time: no cost, never 0.
            ("1", "2026-11-01", "complete", "acme-model-1", 1000, 100, None, None, None),
            # A stale price for a known model.
            ("2", "2026-11-20", "complete", MINI, 19, 10, zero, Decimal(1), Decimal(1)),
            # An error the provider did not bill stays at 0.
            ("3", "2026-11-20", "error_not_billed", MINI, 0, 0, zero, zero, zero),
        ]
        for n, day, status, model, tokens_in, tokens_out, *costs in rows:
            priced = costs[2] is not None
            support.run_sql(
                INSERT,
                (
                    f"018f0000-0000-7000-8000-00000000000{n}",
                    day,
                    status,
                    model,
                    tokens_in,
                    tokens_out,
                    *costs,
                    model if priced else None,
                    "base" if priced else None,
                    BUNDLED_VERSION if priced else None,
                ),
            )
        self.overrides = os.path.abspath(self.mktemp())
        with open(self.overrides, "w") as f:
            f.write("acme-model-1:\n  input: 2\n  output: 8\n")

    def costs(self) -> list[tuple[str, Decimal | None]]:
        return [
            (r[0][-1], r[1])
            for r in support.run_sql("SELECT id::text, total_cost FROM llm_requests ORDER BY id")
        ]

    def test_reprice_all_then_again(self) -> defer.Deferred[None]:
        """
        The first run prices the unknown model and fixes the stale cost; the
        second run changes nothing.
        """

        async def go() -> None:
            out, err, code = await majordomo(
                "reprice", MAJORDOMO_PRICING_OVERRIDES_FILE=self.overrides
            )
            self.assertEqual((err, code), ("", 0))
            self.assertEqual(out, "Repriced 3 requests: 2 changed, 0 still without a price.\n")
            self.assertEqual(
                self.costs(),
                [
                    ("1", Decimal("0.0028")),  # 1000 x $2/M + 100 x $8/M
                    ("2", Decimal("0.00000885")),  # 19 x $0.15/M + 10 x $0.60/M
                    ("3", Decimal("0")),
                ],
            )
            out, _, code = await majordomo(
                "reprice", MAJORDOMO_PRICING_OVERRIDES_FILE=self.overrides
            )
            self.assertEqual(out, "Repriced 3 requests: 0 changed, 0 still without a price.\n")

        return support.as_deferred(go())

    def test_filters(self) -> defer.Deferred[None]:
        """--model and --since limit which rows are recomputed; an unpriced model stays NULL."""

        async def go() -> None:
            out, _, code = await majordomo("reprice", "--model", "acme-model-1")
            self.assertEqual(code, 0)
            self.assertEqual(out, "Repriced 1 requests: 0 changed, 1 still without a price.\n")
            self.assertIsNone(self.costs()[0][1])
            out, _, _ = await majordomo("reprice", "--since", "2026-11-15")
            self.assertEqual(out, "Repriced 2 requests: 1 changed, 0 still without a price.\n")
            self.assertEqual(self.costs()[1][1], Decimal("0.00000885"))
            _, err, code = await majordomo("reprice", "--since", "last week")
            self.assertEqual(code, 2)
            self.assertIn("--since: not a date", err)

        return support.as_deferred(go())


TIERED_INSERT = """
INSERT INTO llm_requests (id, created_at, provider, method, path, usage_status, model,
    service_tier, input_tokens, output_tokens, cached_tokens,
    input_cost, output_cost, total_cost, pricing_key, pricing_tier, price_source)
VALUES (%s, '2026-11-20', %s, 'POST', %s, 'complete', %s, %s, %s, %s, %s,
    %s, %s, %s, %s, 'base', %s)
"""


class RepriceServiceTierTests(TestCase):
    """Reprice prices each row at the service tier its answer reported, as stored."""

    def setUp(self) -> None:
        support.fresh_database()
        one = Decimal(1)
        rows = [
            # Flex, once priced at the standard rate (the bug): gets the flex price.
            ("1", "openai", "gpt-5-2025-08-07", "flex", 12000, 3000, 8000),
            # Priority on a streamed chat.
            ("2", "openai", "gpt-5-mini-2025-08-07", "priority", 2000, 500, 1000),
            # A tier with no price: NULL, counted as still without a price.
            ("3", "openai", "gpt-4o-2024-08-06", "scale", 1000, 200, 0),
            # A retired model's last known price (gemini-2.0-flash: 0.10/0.40).
            ("4", "gemini", "gemini-2.0-flash", None, 1000, 100, 0),
        ]
        for n, provider, model, tier, tokens_in, tokens_out, cached in rows:
            support.run_sql(
                TIERED_INSERT,
                (
                    f"018f0000-0000-7000-8000-00000000010{n}",
                    provider,
                    "/v1/chat/completions",
                    model,
                    tier,
                    tokens_in,
                    tokens_out,
                    cached,
                    one,
                    one,
                    one + one,
                    model,
                    BUNDLED_VERSION,
                ),
            )

    def test_tiers_applied(self) -> defer.Deferred[None]:
        """
        Each row gets the price of its stored service tier (the vectors' figures,
        101, 102 and 104); an unpriced tier's row becomes NULL and is reported.
        """

        async def go() -> None:
            out, err, code = await majordomo("reprice")
            self.assertEqual((err, code), ("", 0))
            self.assertEqual(out, "Repriced 4 requests: 4 changed, 1 still without a price.\n")
            rows = support.run_sql(
                "SELECT input_cost, output_cost, total_cost, price_source"
                " FROM llm_requests ORDER BY id"
            )
            self.assertEqual(
                [row[:3] for row in rows],
                [
                    # 4000 x $0.625/M + 8000 x $0.0625/M; 3000 x $5/M
                    (Decimal("0.003"), Decimal("0.015"), Decimal("0.018")),
                    # 1000 x $0.45/M + 1000 x $0.045/M; 500 x $3.6/M
                    (Decimal("0.000495"), Decimal("0.0018"), Decimal("0.002295")),
                    (None, None, None),
                    # 1000 x $0.10/M; 100 x $0.40/M
                    (Decimal("0.0001"), Decimal("0.00004"), Decimal("0.00014")),
                ],
            )
            self.assertEqual(rows[3][3], pricing.RETIRED_SOURCE)
            out, _, _ = await majordomo("reprice")
            self.assertEqual(out, "Repriced 4 requests: 0 changed, 1 still without a price.\n")

        return support.as_deferred(go())
