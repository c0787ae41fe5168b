# -*- test-case-name: tests.test_pricing_retired -*-
"""
The last published prices of models LiteLLM's live table no longer lists.

A ledger holds years of requests, and C{reprice} must price all of them: a
model the providers billed from 2024 on keeps the last price LiteLLM published
for it.  C{data/litellm-retired-prices.json} holds those entries, each taken
from the newest PyPI release of LiteLLM that still had it (built by
C{scripts/build_retired_prices.py}; C{data/RETIRED.md} says how), with
C{data/retired-corrections.yaml} layered over the entries LiteLLM got wrong.
These prices lie below the bundled table: a model the current table prices is
never priced from here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from typing import Any

import yaml

from majordomo.pricing_sources import (
    PriceTables,
    PricingError,
    normalise_model,
    parse_litellm,
    parse_overrides,
)

RETIRED_FILE = "data/litellm-retired-prices.json"
CORRECTIONS_FILE = "data/retired-corrections.yaml"

# What each correction says besides its prices: where the price was published,
# and what was wrong with LiteLLM's entry.
_CORRECTION_NOTES = ("published", "source")

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


def correct(retired: RetiredPrices, corrections: Mapping[str, Any]) -> RetiredPrices:
    """
    C{retired} with C{corrections} (the corrections file's shape: table ->
    model -> per-million prices, C{published} and C{source}) layered over it.

    Raises L{PricingError} for a correction of a model the file does not hold
    (the file was rebuilt without it) or one that does not say its source.
    """
    tables = {table: dict(models) for table, models in retired.tables.items()}
    provenance = dict(retired.provenance)
    for table, models in corrections.items():
        where = f"{CORRECTIONS_FILE}: {table}"
        if not isinstance(models, Mapping):
            raise PricingError(f"{where}: expected a mapping of model id to prices")
        prices = {model: _without_notes(spec) for model, spec in models.items()}
        for key, price in parse_overrides(prices, source=where).items():
            spec = models[next(m for m in models if normalise_model(m) == key)]
            below = tables.get(table, {}).get(key)
            if below is None:
                raise PricingError(f"{where}: {key}: corrects no retired model")
            if not all(isinstance(spec.get(note), str) for note in _CORRECTION_NOTES):
                raise PricingError(f"{where}: {key}: says neither where nor why")
            tables[table][key] = price.layered_over(below)
            provenance[table, key] = (
                f"last published price: {spec['published']}, source: {spec['source']}"
                f" (corrects {retired.provenance[table, key].partition('source: ')[2]})"
            )
    return RetiredPrices(tables, provenance)


def _without_notes(spec: object) -> object:
    """A correction's price fields alone (a copy: YAML aliases share one mapping)."""
    if not isinstance(spec, Mapping):
        return spec
    return {name: value for name, value in spec.items() if name not in _CORRECTION_NOTES}


def load_retired() -> RetiredPrices:
    """The retired models' prices shipped in C{majordomo/data}, corrected."""
    package = resources.files("majordomo")
    data = package.joinpath(RETIRED_FILE).read_bytes()
    retired = parse_retired(json.loads(data, parse_float=Decimal))
    corrections = yaml.safe_load(package.joinpath(CORRECTIONS_FILE).read_text("utf-8"))
    return correct(retired, corrections or {})
