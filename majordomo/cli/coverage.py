# -*- test-case-name: tests.test_pricing_coverage -*-
"""
C{majordomo pricing coverage}: where the ledger's costs are missing, and what
the shipped price data can price.

Two lists.  The models seen in C{llm_requests} (per provider and model, in one
aggregating query), with how many of their rows have no cost, how many of
those the price table did not know at the time (no C{pricing_key}), and the
price key today's book would use, so an operator sees what C{reprice} would
fix and what needs a price.  Then every model of the shipped price data (the
bundled table over the retired models' last known prices) with the buckets it
prices beyond plain input and output: cache reads and writes, long-context
tiers, service tiers, audio.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any, TextIO

from majordomo.cli.columns import write_columns
from majordomo.cli.options import CommandOptions, parse_date
from majordomo.config import Config
from majordomo.db import Database
from majordomo.pricing import PriceBook, configured_book
from majordomo.pricing.litellm import load_bundled
from majordomo.pricing.prices import PRICE_FIELDS, ModelPrice, PriceTables, PriceTier, price_fields
from majordomo.pricing.retired import load_retired
from majordomo.usage import ERROR_NOT_BILLED

# One pass over llm_requests (or, with --since, over the created_at index's
# range), grouped in PostgreSQL: no row reaches Python.  "Unpriced" counts as
# `majordomo usage` does: no cost, except errors the provider did not bill.
_SEEN_QUERY = """
SELECT provider, model,
    COUNT(*) AS requests,
    COUNT(*) FILTER (
        WHERE total_cost IS NULL AND usage_status <> %(not_billed)s
    ) AS unpriced,
    COUNT(*) FILTER (
        WHERE total_cost IS NULL AND usage_status <> %(not_billed)s AND pricing_key IS NULL
    ) AS no_price
FROM llm_requests
WHERE {where}
GROUP BY provider, model
ORDER BY unpriced DESC, requests DESC, provider, model NULLS LAST
"""

# How the price fields beyond input and output are grouped into buckets.
_CACHE_FIELDS = tuple(name for name in PRICE_FIELDS if "cache" in name)
_AUDIO_FIELDS = tuple(name for name in PRICE_FIELDS if "audio" in name)
# Short names for the table's columns.
_SHORT = {
    "input": "in",
    "output": "out",
    "cached_input": "read",
    "cache_write_5m": "write-5m",
    "cache_write_1h": "write-1h",
    "cache_write": "write",
    "input_audio": "in",
    "output_audio": "out",
}


@dataclass(frozen=True)
class SeenModel:
    """
    One (provider, model) of the ledger: its rows, those without a cost, and
    those of them priced when the model had no price (C{no_price}).
    C{price_now} is the key today's book prices it under, or None.
    """

    provider: str
    model: str | None
    requests: int
    unpriced: int
    no_price: int
    price_now: str | None


@dataclass(frozen=True)
class TableModel:
    """
    One model of the shipped price data and the buckets it prices: cache
    fields, long-context tier thresholds (with the fields a tier sets when it
    sets fewer than the base price does), service tier names, audio fields.
    """

    provider: str
    model: str
    cache: tuple[str, ...]
    long_context: tuple[str, ...]
    service_tiers: tuple[str, ...]
    audio: tuple[str, ...]
    retired: bool


def seen_query(since: date | None) -> tuple[str, dict[str, Any]]:
    """The ledger query and its parameters (the date is a parameter, never SQL text)."""
    params: dict[str, Any] = {"not_billed": ERROR_NOT_BILLED}
    where = "TRUE"
    if since is not None:
        where = "created_at >= %(since)s"
        params["since"] = datetime(since.year, since.month, since.day, tzinfo=UTC)
    return _SEEN_QUERY.format(where=where), params


async def fetch_seen(db: Database, book: PriceBook, since: date | None) -> list[SeenModel]:
    """The models seen in C{llm_requests}, most unpriced first, each looked up in C{book}."""
    sql, params = seen_query(since)
    rows = await db.run_query(sql, params)
    seen = []
    for provider, model, requests, unpriced, no_price in rows:
        match = book.lookup(provider, model)
        key = None if match is None else match.pricing_key
        seen.append(SeenModel(provider, model, int(requests), int(unpriced), int(no_price), key))
    return seen


def _tier_label(tier: PriceTier, base: ModelPrice) -> str:
    """C{">200k"}, followed by the fields it sets if it leaves some of the base's unset."""
    n = tier.above_input_tokens
    label = f">{n // 1000}k" if n % 1000 == 0 else f">{n}"
    fields = price_fields(tier.price)
    if set(price_fields(base)) <= set(fields):
        return label
    return label + "(" + "+".join(_SHORT[name] for name in fields) + ")"


def table_model(provider: str, model: str, price: ModelPrice, retired: bool) -> TableModel:
    """The buckets one price prices, read from its fields, tiers and service tiers."""
    fields = price_fields(price)
    services = getattr(price, "service_tiers", ())
    return TableModel(
        provider,
        model,
        cache=tuple(_SHORT[name] for name in _CACHE_FIELDS if name in fields),
        long_context=tuple(_tier_label(tier, price) for tier in price.tiers),
        service_tiers=tuple(name for name, _ in services),
        audio=tuple(_SHORT[name] for name in _AUDIO_FIELDS if name in fields),
        retired=retired,
    )


def table_models(
    tables: PriceTables, retired: Collection[tuple[str, str]] = ()
) -> list[TableModel]:
    """
    Every model of C{tables}, by provider then model; C{retired} holds the
    (table, model id) entries that are retired models' last known prices.
    """
    return [
        table_model(provider, key, tables[provider][key], (provider, key) in retired)
        for provider in sorted(tables)
        for key in sorted(tables[provider])
    ]


def shipped_models() -> list[TableModel]:
    """The models of the price data shipped in the package, retired ones included."""
    bundled = load_bundled(load_retired().tables)
    return table_models(bundled.tables, bundled.from_below)


def _cell(values: Sequence[str]) -> str:
    return ",".join(values) or "-"


def write_text(
    seen: Sequence[SeenModel], table: Sequence[TableModel], since: date | None, out: TextIO
) -> None:
    """Both lists as aligned columns, each with a summary line."""
    scope = f" since {since.isoformat()}" if since else ""
    out.write(f"Models seen in llm_requests{scope}:\n")
    if not seen:
        out.write("  (no requests)\n")
    else:
        rows: list[tuple[str, ...]] = [
            ("PROVIDER", "MODEL", "REQUESTS", "UNPRICED", "NO PRICE", "PRICED NOW AS")
        ]
        rows += [
            (
                s.provider,
                s.model or "-",
                str(s.requests),
                str(s.unpriced),
                str(s.no_price),
                s.price_now or "-",
            )
            for s in seen
        ]
        write_columns(rows, out, numbers=range(2, 5))
        unpriced = sum(s.unpriced for s in seen)
        fixable = sum(s.no_price for s in seen if s.price_now is not None)
        out.write(
            f"{sum(s.requests for s in seen)} requests, {unpriced} without a cost; "
            f"{fixable} of those had no price then and have one now (majordomo reprice).\n"
        )
    out.write("\nBundled price table (beyond input and output prices):\n")
    table_rows: list[tuple[str, ...]] = [
        ("PROVIDER", "MODEL", "CACHE", "LONG CONTEXT", "SERVICE TIERS", "AUDIO", "NOTE")
    ]
    table_rows += [
        (
            t.provider,
            t.model,
            _cell(t.cache),
            _cell(t.long_context),
            _cell(t.service_tiers),
            _cell(t.audio),
            "retired: last known price" if t.retired else "",
        )
        for t in table
    ]
    write_columns(table_rows, out)
    for provider in sorted({t.provider for t in table}):
        mine = [t for t in table if t.provider == provider]
        counts = (
            f"{sum(1 for t in mine if t.cache)} with cache prices, "
            f"{sum(1 for t in mine if t.long_context)} with long-context tiers, "
            f"{sum(1 for t in mine if t.service_tiers)} with service tiers, "
            f"{sum(1 for t in mine if t.audio)} with audio, "
            f"{sum(1 for t in mine if t.retired)} retired"
        )
        out.write(f"{provider}: {len(mine)} models, {counts}.\n")


def write_json(
    seen: Sequence[SeenModel], table: Sequence[TableModel], since: date | None, out: TextIO
) -> None:
    """Both lists as one JSON object (C{seen}, C{price_table}); buckets as lists."""
    document = {
        "since": since.isoformat() if since else None,
        "seen": [asdict(s) for s in seen],
        "price_table": [asdict(t) for t in table],
    }
    out.write(json.dumps(document, indent=2) + "\n")


class CoverageOptions(CommandOptions):
    synopsis = "[--since YYYY-MM-DD] [--json]"
    longdesc = (
        "The models seen in llm_requests with how many rows have no cost (most "
        "unpriced first), then the bundled price table's models with the buckets "
        "each prices: cache, long-context tiers, service tiers, audio."
    )
    optFlags = [["json", "j", "One JSON object instead of columns."]]
    optParameters = CommandOptions.optParameters + [
        ["since", "s", None, "Only requests that arrived on or after this date (UTC)."],
    ]

    def postOptions(self) -> None:
        self["since"] = parse_date("--since", self["since"])


async def coverage_command(reactor: Any, config: Config, options: Any, out: TextIO) -> int:
    """C{majordomo pricing coverage}: query the ledger, read the price data, write both."""
    book = configured_book(config)
    db = Database(config.storage.postgres, reactor=reactor, pool_size=1)
    try:
        await db.connect_once()
        seen = await fetch_seen(db, book, options["since"])
    finally:
        db.close()
    table = shipped_models()
    (write_json if options["json"] else write_text)(seen, table, options["since"], out)
    return 0
