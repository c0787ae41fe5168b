# -*- test-case-name: tests.test_reprice -*-
"""
C{majordomo reprice}: recompute stored costs with today's prices.

Every row keeps its exact token counts, usage status, reported model and the
service tier the answer reported, so its cost can be recomputed, at that
tier, after prices change or a missing price appears.  Running it twice
changes nothing the second time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

from majordomo.db import Database
from majordomo.ledger.record import TOKEN_COLUMNS
from majordomo.pricing import PriceBook
from majordomo.pricing.cost import Cost
from majordomo.usage import Usage

PAGE_SIZE = 1000
_COST_COLUMNS = (
    "input_cost",
    "output_cost",
    "total_cost",
    "pricing_key",
    "pricing_tier",
    "price_source",
)
_SELECT = (
    "SELECT id::text, provider, usage_status, model, service_tier, "
    + ", ".join(TOKEN_COLUMNS)
    + ", "
    + ", ".join(_COST_COLUMNS)
    + " FROM llm_requests WHERE id > %s"
    " AND (%s::timestamptz IS NULL OR created_at >= %s::timestamptz)"
    " AND (%s::text IS NULL OR model = %s OR model_requested = %s)"
    " ORDER BY id LIMIT %s"
)
_UPDATE = """
UPDATE llm_requests SET
    input_cost = new.input_cost,
    output_cost = new.output_cost,
    total_cost = new.total_cost,
    pricing_key = new.pricing_key,
    pricing_tier = new.pricing_tier,
    price_source = new.price_source
FROM jsonb_to_recordset(%s::jsonb) AS new(
    id uuid, input_cost numeric, output_cost numeric, total_cost numeric,
    pricing_key text, pricing_tier text, price_source text)
WHERE llm_requests.id = new.id
"""


@dataclass
class RepriceResult:
    """What a reprice run did."""

    examined: int = 0
    changed: int = 0
    unpriced: int = 0


def _usage(row: tuple[Any, ...]) -> Usage:
    _, _, status, model, service_tier, *rest = row
    tokens = dict(zip(TOKEN_COLUMNS, rest[: len(TOKEN_COLUMNS)], strict=True))
    return Usage(usage_status=status, model=model, service_tier=service_tier, **tokens)


def _columns(cost: Cost) -> dict[str, Any]:
    return {
        "input_cost": cost.input_cost,
        "output_cost": cost.output_cost,
        "total_cost": cost.total_cost,
        "pricing_key": cost.pricing_key,
        "pricing_tier": cost.pricing_tier,
        "price_source": cost.price_source,
    }


def _same(old: tuple[Any, ...], new: dict[str, Any]) -> bool:
    return tuple(old) == tuple(new[column] for column in _COST_COLUMNS)


async def reprice(
    db: Database, book: PriceBook, since: date | None = None, model: str | None = None
) -> RepriceResult:
    """Recompute the costs of every matching row, a page at a time; update those that differ."""
    result = RepriceResult()
    last_id = "00000000-0000-0000-0000-000000000000"
    since_text = since.isoformat() if since else None
    while True:
        rows = await db.run_query(
            _SELECT, (last_id, since_text, since_text, model, model, model, PAGE_SIZE)
        )
        if not rows:
            return result
        updates = []
        for row in rows:
            cost = book.cost(row[1], _usage(row))
            new = _columns(cost)
            result.examined += 1
            if cost.total_cost is None and (
                cost.pricing_key is None or cost.unpriced_service_tier is not None
            ):
                result.unpriced += 1  # no price for its model, or for its service tier
            if not _same(row[-len(_COST_COLUMNS) :], new):
                updates.append({"id": row[0], **new})
        if updates:
            await db.run_operation(_UPDATE, (json.dumps(updates, default=str),))
            result.changed += len(updates)
        last_id = rows[-1][0]
