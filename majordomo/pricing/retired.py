# -*- test-case-name: tests.test_pricing_retired -*-
"""
The last published prices of models LiteLLM's live table no longer lists.

A ledger holds years of requests, and C{reprice} must price all of them: a
model the providers billed from 2024 on keeps the last price LiteLLM published
for it.  C{data/litellm-retired-prices.json} holds those entries, each taken
from the newest PyPI release of LiteLLM that still had it (built by
C{scripts/build_retired_prices.py}; C{data/RETIRED.md} says how), with
C{data/retired-corrections.yaml} layered over the entries LiteLLM got wrong
and C{data/retired-additions.yaml} adding models it never priced for the
providers we route.  These prices lie below the bundled table: a model the
current table prices is never priced from here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from importlib import resources
from typing import Any

import yaml

from majordomo.pricing.litellm import parse_litellm
from majordomo.pricing.overrides import parse_overrides
from majordomo.pricing.prices import ModelPrice, PriceTables, PricingError, normalise_model

RETIRED_FILE = "data/litellm-retired-prices.json"
CORRECTIONS_FILE = "data/retired-corrections.yaml"
ADDITIONS_FILE = "data/retired-additions.yaml"

# What each correction or addition says besides its prices: where the price
# was published, and where it was read (and, for a correction, what was wrong).
_NOTES = ("published", "source")

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

    Raises L{PricingError} for a correction of a model C{retired} does not
    hold (the file was rebuilt without it) or one that does not say its source.
    """
    tables = {table: dict(models) for table, models in retired.tables.items()}
    provenance = dict(retired.provenance)
    for table, key, price, notes in _noted_prices(corrections, CORRECTIONS_FILE):
        below = tables.get(table, {}).get(key)
        if below is None:
            raise PricingError(f"{CORRECTIONS_FILE}: {table}: {key}: corrects no retired model")
        tables[table][key] = price.layered_over(below)
        corrected = retired.provenance[table, key].partition("source: ")[2]
        provenance[table, key] = f"{notes} (corrects {corrected})"
    return RetiredPrices(tables, provenance)


def add(retired: RetiredPrices, additions: Mapping[str, Any]) -> RetiredPrices:
    """
    C{retired} with C{additions} (the corrections file's shape): models
    LiteLLM never priced for a provider we route, at their published prices.

    Raises L{PricingError} for an addition C{retired} already holds (that is
    a correction) or one that does not say its source.
    """
    tables = {table: dict(models) for table, models in retired.tables.items()}
    provenance = dict(retired.provenance)
    for table, key, price, notes in _noted_prices(additions, ADDITIONS_FILE):
        if key in tables.get(table, {}):
            raise PricingError(f"{ADDITIONS_FILE}: {table}: {key}: already priced; correct it")
        tables.setdefault(table, {})[key] = price
        provenance[table, key] = notes
    return RetiredPrices(tables, provenance)


def _noted_prices(
    document: Mapping[str, Any], name: str
) -> Iterator[tuple[str, str, ModelPrice, str]]:
    """
    (table, model id, price, provenance line) for each model of a corrections
    or additions file, each of which must say where its price was published
    and what its source is.
    """
    for table, models in document.items():
        where = f"{name}: {table}"
        if not isinstance(models, Mapping):
            raise PricingError(f"{where}: expected a mapping of model id to prices")
        notes = {normalise_model(model): spec for model, spec in models.items()}
        prices = {model: _without_notes(spec) for model, spec in models.items()}
        for key, price in parse_overrides(prices, source=where).items():
            spec = notes[key]
            if not all(isinstance(spec.get(note), str) for note in _NOTES):
                raise PricingError(f"{where}: {key}: says neither where nor why")
            line = f"last published price: {spec['published']}, source: {spec['source']}"
            yield table, key, price, line


def _without_notes(spec: object) -> object:
    """A model's price fields alone (a copy: YAML aliases share one mapping)."""
    if not isinstance(spec, Mapping):
        return spec
    return {name: value for name, value in spec.items() if name not in _NOTES}


def load_retired() -> RetiredPrices:
    """The retired models' prices shipped in C{majordomo/data}, corrected and completed."""
    package = resources.files("majordomo")
    data = package.joinpath(RETIRED_FILE).read_bytes()
    retired = parse_retired(json.loads(data, parse_float=Decimal))
    for name, apply in ((CORRECTIONS_FILE, correct), (ADDITIONS_FILE, add)):
        document = yaml.safe_load(package.joinpath(name).read_text("utf-8"))
        retired = apply(retired, document or {})
    return retired
