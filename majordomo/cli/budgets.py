# -*- test-case-name: tests.test_policy_cli -*-
"""
C{majordomo usage --budgets}: every key with a budget, and each bucket's
spend in the budget's current window against it.

One query over C{key_policies}, C{api_keys} and the current C{policy_windows}
(C{window_start = majordomo_window_start(kind, now())}); a key whose window
has no row yet has spent nothing, and is shown so.  C{spent} is what the log
writer's batch statement counted from the rows, so it agrees with
C{SUM(total_cost)} over the window; C{reserved} is what running gateways
hold of the budget now (their live leases).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TextIO

from majordomo.cli.columns import write_columns
from majordomo.cli.policy import bucket_label, money
from majordomo.db import Database
from majordomo.logtext import printable

BUDGETS_QUERY = """
SELECT ak.name, ak.id::text, p.budget_period, p.per_metadata, coalesce(w.bucket, ''),
    majordomo_window_start(p.budget_period, now()),
    coalesce(w.spent, 0),
    coalesce((SELECT sum((l->>'a')::numeric) FROM jsonb_each(w.leases) AS e(h, l)
              WHERE (l->>'x')::double precision >= extract(epoch FROM now())), 0),
    p.budget_usd
FROM key_policies p
JOIN api_keys ak ON ak.id = p.majordomo_api_key_id
LEFT JOIN policy_windows w ON w.majordomo_api_key_id = p.majordomo_api_key_id
    AND w.kind = p.budget_period
    AND w.window_start = majordomo_window_start(p.budget_period, now())
WHERE p.budget_period IS NOT NULL
ORDER BY ak.name, ak.id, 7 DESC, 5
"""

FIELDS = (
    "key_name",
    "key_id",
    "period",
    "per_metadata",
    "bucket",
    "window_start",
    "spent",
    "reserved",
    "budget",
    "remaining",
    "percent_used",
)
_TENTH = Decimal("0.1")


@dataclass(frozen=True)
class BudgetUse:
    """One bucket of one key's budget in its current window."""

    key_name: str
    key_id: str
    period: str
    per_metadata: str | None
    bucket: str
    window_start: datetime
    spent: Decimal
    reserved: Decimal
    budget: Decimal

    @property
    def remaining(self) -> Decimal:
        """What admissions may still use: the budget less the spent and the reserved."""
        return self.budget - self.spent - self.reserved

    @property
    def percent_used(self) -> Decimal | None:
        """The spent share of the budget, to a tenth of a percent; None for a $0 budget."""
        if self.budget == 0:
            return None
        return (self.spent * 100 / self.budget).quantize(_TENTH, rounding=ROUND_HALF_UP)

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in FIELDS)


async def fetch_budgets(db: Database) -> list[BudgetUse]:
    """Every budgeted key's current window, per bucket: by key name, most spent first."""
    rows = await db.run_query(BUDGETS_QUERY)
    return [
        BudgetUse(
            name,
            key_id,
            period,
            per,
            bucket,
            start.astimezone(UTC),
            Decimal(spent),
            Decimal(held),
            budget,
        )
        for name, key_id, period, per, bucket, start, spent, held, budget in rows
    ]


def _plain(value: Any) -> Any:
    """JSON and CSV values: money and percents as exact decimal strings, times in ISO 8601."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def write_budgets_json(uses: Sequence[BudgetUse], out: TextIO) -> None:
    objects = [dict(zip(FIELDS, map(_plain, use.values()), strict=True)) for use in uses]
    out.write(json.dumps(objects, indent=2) + "\n")


def write_budgets_csv(uses: Sequence[BudgetUse], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    for use in uses:
        writer.writerow(["" if v is None else _plain(v) for v in use.values()])


def write_budgets_table(uses: Sequence[BudgetUse], out: TextIO) -> None:
    """Aligned columns, money right-aligned and exact."""
    if not uses:
        out.write(
            "No key has a budget. Set one with: "
            "majordomo keys policy set KEY_ID --budget USD --period month\n"
        )
        return
    header = ("KEY", "KEY ID", "PERIOD", "BUCKET", "SPENT", "RESERVED", "BUDGET", "REMAINING")
    rows = [header + ("USED",)]
    for use in uses:
        percent = use.percent_used
        rows.append(
            (
                printable(use.key_name),
                use.key_id,
                use.period,
                bucket_label(use.per_metadata, use.bucket),
                money(use.spent),
                money(use.reserved),
                money(use.budget),
                money(use.remaining),
                "-" if percent is None else f"{percent}%",
            )
        )
    write_columns(rows, out, numbers=range(4, 9))


BUDGET_WRITERS: dict[str, Callable[[Sequence[BudgetUse], TextIO], None]] = {
    "table": write_budgets_table,
    "json": write_budgets_json,
    "csv": write_budgets_csv,
}
