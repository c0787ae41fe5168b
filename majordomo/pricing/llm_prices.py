# -*- test-case-name: tests.test_pricing -*-
"""
llm-prices.com's C{current-v1} feed (USD per million tokens), read into
L{ModelPrice} records.  Fetched only: it carries no licence to bundle it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from majordomo.pricing.prices import (
    ModelPrice,
    PriceTables,
    PricingError,
    normalise_model,
    per_million,
)

# llm-prices vendors we route, and the price table each one updates.
_LLM_PRICES_TABLES = {"openai": "openai", "anthropic": "anthropic", "google": "gemini"}


def parse_llm_prices(document: Mapping[str, Any]) -> PriceTables:
    """
    Read llm-prices.com's C{current-v1} feed (USD per million tokens).

    Its ids are editorial slugs, stored as they are (normalised): a slug that is
    also an API model id (C{gpt-4o}, C{o3}) prices that model; the rest
    (C{claude-3.7-sonnet}, tier pseudo-ids like C{gemini-2.5-pro-200k}) match
    no API id and so change nothing.
    """
    rows = document.get("prices")
    if not isinstance(rows, list):
        raise PricingError("llm-prices: 'prices' is not a list")
    tables: PriceTables = {}
    for number, row in enumerate(rows):
        if not isinstance(row, Mapping) or not isinstance(row.get("id"), str):
            raise PricingError(f"llm-prices: row {number} has no id")
        where = f"llm-prices: {row['id']}"
        table_name = _LLM_PRICES_TABLES.get(str(row.get("vendor")))
        if table_name is None:
            continue
        cached = row.get("input_cached")
        price = ModelPrice(
            input=per_million(row.get("input"), f"{where}: input"),
            output=per_million(row.get("output"), f"{where}: output"),
            cached_input=None if cached is None else per_million(cached, f"{where}: input_cached"),
        )
        tables.setdefault(table_name, {})[normalise_model(row["id"])] = price
    return tables
