# -*- test-case-name: tests.test_pricing_retired -*-
"""
The last published prices of models LiteLLM's live table no longer lists.

A ledger holds years of requests, and C{reprice} must price all of them: a
model the providers billed from 2024 on keeps the last price LiteLLM published
for it.  C{data/litellm-retired-prices.json} holds those entries, each taken
from the newest PyPI release of LiteLLM that still had it (built by
C{scripts/build_retired_prices.py}; C{data/RETIRED.md} says how).  These prices
lie below the bundled table: a model the current table prices is never priced
from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from typing import Any

from majordomo.pricing_sources import PriceTables, normalise_model, parse_litellm

RETIRED_FILE = "data/litellm-retired-prices.json"

# Fields the build script adds to each LiteLLM entry to say where it came from.
LAST_SEEN_FIELD = "majordomo_last_seen"
SOURCE_FIELD = "majordomo_source"

# The price table each LiteLLM provider's entries go to (as in parse_litellm).
_TABLE_OF_PROVIDER = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "azure": "azure",
}


@dataclass(frozen=True)
class RetiredPrices:
    """
    Retired models' prices, and where each one was last published.

    C{tables} is shaped like any other price source (table -> normalised model
    id -> L{ModelPrice}); C{provenance} maps (table, model id) to one line,
    C{"last published price: <version and date>, source: <source>"}.
    """

    tables: PriceTables
    provenance: dict[tuple[str, str], str] = field(default_factory=dict)


def parse_retired(document: dict[str, Any]) -> RetiredPrices:
    """Read the retired-prices file's entries (LiteLLM's shape plus provenance)."""
    tables = parse_litellm(document)
    provenance: dict[tuple[str, str], str] = {}
    for key, entry in document.items():
        table = _TABLE_OF_PROVIDER.get(str(entry.get("litellm_provider")))
        model = normalise_model(key)
        if table is None or model not in tables.get(table, {}):
            continue
        last_seen = entry.get(LAST_SEEN_FIELD, "unknown")
        source = entry.get(SOURCE_FIELD, "unknown")
        provenance[table, model] = f"last published price: {last_seen}, source: {source}"
    return RetiredPrices(tables, provenance)


def load_retired() -> RetiredPrices:
    """The retired models' prices shipped in C{majordomo/data}."""
    data = resources.files("majordomo").joinpath(RETIRED_FILE).read_bytes()
    return parse_retired(json.loads(data, parse_float=Decimal))
