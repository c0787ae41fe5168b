"""What a finished request counts against its budget (L{majordomo.policy.gate.budget_charge})."""

from __future__ import annotations

from decimal import Decimal

from twisted.trial.unittest import TestCase

from majordomo import usage
from majordomo.policy.gate import budget_charge

RESERVED = Decimal("0.0123")


class BudgetChargeTests(TestCase):
    def test_complete_usage_counts_its_exact_cost(self) -> None:
        self.assertEqual(
            budget_charge(RESERVED, Decimal("0.000001"), usage.COMPLETE), Decimal("0.000001")
        )

    def test_not_billed_counts_nothing(self) -> None:
        for status in (usage.ERROR_NOT_BILLED, usage.NOT_APPLICABLE):
            self.assertEqual(budget_charge(RESERVED, None, status), 0, status)
            self.assertEqual(budget_charge(RESERVED, Decimal(0), status), 0, status)

    def test_uncertain_usage_counts_the_reservation(self) -> None:
        """Whatever may have been billed without our knowing counts its upper bound."""
        for status in (
            usage.MISSING_STREAM_TRUNCATED,
            usage.MISSING_NOT_REQUESTED,
            usage.UNPARSEABLE,
            usage.INVALID_USAGE,
            usage.PENDING_BACKGROUND,
            usage.UNKNOWN,
        ):
            self.assertEqual(budget_charge(RESERVED, None, status), RESERVED, status)

    def test_partial_usage_counts_at_least_the_reservation(self) -> None:
        """A stream cut after part of its usage: what is known is a lower bound."""
        partial = usage.PARTIAL_STREAM_TRUNCATED
        self.assertEqual(budget_charge(RESERVED, Decimal("0.001"), partial), RESERVED)
        self.assertEqual(budget_charge(RESERVED, Decimal("0.5"), partial), Decimal("0.5"))

    def test_a_complete_usage_above_the_estimate_counts_in_full(self) -> None:
        self.assertEqual(budget_charge(RESERVED, Decimal("7"), usage.COMPLETE), Decimal("7"))
