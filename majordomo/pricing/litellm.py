# -*- test-case-name: tests.test_pricing -*-
"""
LiteLLM's price table (USD per token, keyed by model), read into
L{ModelPrice} records: the copy bundled in the package, with the retired
models' prices below it and the project's corrections over it, or a fetched
copy (USAGE-SPEC.md section 7).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from importlib import resources
from typing import Any

import yaml

from majordomo.pricing.overrides import parse_overrides
from majordomo.pricing.prices import (
    ModelPrice,
    PriceTables,
    PriceTier,
    decimal_price,
    normalise_model,
    sane_token_limit,
)

# Price tables by the LiteLLM provider their entries carry.
_LITELLM_TABLES = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "azure": "azure",
}

# LiteLLM per-token fields and the ModelPrice field each one fills.
# cache_creation_input_token_cost is Anthropic's 5-minute write but OpenAI's
# TTL-less write, so it is renamed for Anthropic below.
_LITELLM_FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cached_input",
    "cache_creation_input_token_cost": "cache_write",
    # "above_1hr" reads like a threshold but is the 1-hour TTL write price.
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
    "input_cost_per_audio_token": "input_audio",
    "output_cost_per_audio_token": "output_audio",
}
_LITELLM_TIER_FIELD = re.compile(r"^(?P<field>.+)_above_(?P<thousands>\d+)k_tokens$")
# LiteLLM's service-tier suffixes and the tier name a response reports for
# each (USAGE-SPEC.md sections 5 and 7.2): C{input_cost_per_token_flex},
# C{input_cost_per_token_above_272k_tokens_priority}, ...  Batch prices are
# named for Anthropic's C{usage.service_tier: "batch"}.
_LITELLM_SERVICE_TIERS = {
    "flex": "flex",
    "balanced": "balanced",
    "priority": "priority",
    "ultrafast": "ultrafast",
    "batches": "batch",
}
_LITELLM_SERVICE_TIER_FIELD = re.compile(
    r"^(?P<field>.+?)(?:_above_(?P<thousands>\d+)k_tokens)?_(?P<tier>"
    + "|".join(_LITELLM_SERVICE_TIERS)
    + r")$"
)


def parse_litellm(table: Mapping[str, Any]) -> PriceTables:
    """
    Read a LiteLLM price table (USD per token, keyed by model), keeping the
    entries of the providers we route and at least one token price.

    C{gemini/} and C{azure/} keys are stored without that prefix.  Where two
    keys normalise to the same id, the one written with the provider prefix
    wins (USAGE-SPEC.md section 7.2: the C{gemini/} keys are the Gemini API's).
    """
    tables: PriceTables = {}
    prefixed: set[tuple[str, str]] = set()
    for key, entry in table.items():
        if not isinstance(entry, Mapping):
            continue
        table_name = _LITELLM_TABLES.get(str(entry.get("litellm_provider")))
        if table_name is None:
            continue
        price = _litellm_price(key, entry, table_name)
        if price.is_empty():
            continue
        model = normalise_model(key)
        has_prefix = key.lower().startswith(f"{table_name}/")
        if (table_name, model) in prefixed and not has_prefix:
            continue
        if has_prefix:
            prefixed.add((table_name, model))
        tables.setdefault(table_name, {})[model] = price
    return tables


def _litellm_price(key: str, entry: Mapping[str, Any], table_name: str) -> ModelPrice:
    """
    The token prices of one LiteLLM entry, with its C{*_above_{N}k_tokens}
    tiers and its service tiers (C{*_flex}, C{*_above_{N}k_tokens_priority}, ...),
    and the model's C{max_output_tokens} when the entry states a sane one
    (L{sane_token_limit}; LiteLLM's entries carry C{null}, strings and 0 too).
    """
    # (service tier or None, threshold or None) -> ModelPrice field -> price
    found: dict[tuple[str | None, int | None], dict[str, Decimal]] = {}
    for litellm_field, value in entry.items():
        service, threshold, name = None, None, _LITELLM_FIELDS.get(litellm_field)
        if name is None and (tier_field := _LITELLM_TIER_FIELD.match(litellm_field)):
            name = _LITELLM_FIELDS.get(tier_field["field"])
            threshold = int(tier_field["thousands"]) * 1000
        if name is None and (served := _LITELLM_SERVICE_TIER_FIELD.match(litellm_field)):
            name = _LITELLM_FIELDS.get(served["field"])
            service = _LITELLM_SERVICE_TIERS[served["tier"]]
            threshold = int(served["thousands"]) * 1000 if served["thousands"] else None
        if name is None or value is None:
            continue
        if name == "cache_write" and table_name == "anthropic":
            name = "cache_write_5m"
        found.setdefault((service, threshold), {})[name] = decimal_price(
            value, f"{key}: {litellm_field}"
        )

    def price_of(service: str | None) -> ModelPrice:
        thresholds = sorted(n for s, n in found if s == service and n is not None)
        tiers = tuple(
            PriceTier(
                n,
                ModelPrice(**found[service, n], max_output_tokens=None, tiers=(), service_tiers=()),
            )
            for n in thresholds
        )
        return ModelPrice(
            **found.get((service, None), {}), max_output_tokens=None, tiers=tiers, service_tiers=()
        )

    services = sorted({service for service, _ in found if service is not None})
    return replace(
        price_of(None),
        service_tiers=tuple((name, price_of(name)) for name in services),
        max_output_tokens=sane_token_limit(entry.get("max_output_tokens")),
    )


@dataclass(frozen=True)
class BundledPrices:
    """
    The prices shipped in the package: C{tables}, and which of their entries
    (price table, model id) are only in the layer below the LiteLLM table
    (retired models' last known prices).
    """

    tables: PriceTables
    from_below: frozenset[tuple[str, str]] = frozenset()


def load_bundled(below: PriceTables | None = None) -> BundledPrices:
    """
    The LiteLLM table shipped in C{majordomo/data}; under it C{below} (the
    retired models' prices), which gives only the models the table lacks,
    whole; over both the project's own corrections (C{data/corrections.yaml}),
    layered per field.  A correction that sets a model's input and output
    prices is a price of its own: that model no longer counts as one from
    below (a served model LiteLLM dropped, such as Claude Sonnet 4, is not
    labelled retired).
    """
    data = resources.files("majordomo").joinpath("data/litellm-model-prices.json").read_bytes()
    tables = parse_litellm(json.loads(data, parse_float=Decimal))
    from_below = set()
    for table, models in (below or {}).items():
        current = tables.setdefault(table, {})
        for key, price in models.items():
            if key not in current:
                current[key] = price
                from_below.add((table, key))
    corrections = yaml.safe_load(
        resources.files("majordomo").joinpath("data/corrections.yaml").read_text("utf-8")
    )
    for table, models in corrections.items():
        prices = tables.setdefault(table, {})
        for key, price in parse_overrides(models, source=f"corrections.yaml: {table}").items():
            lower = prices.get(key)
            prices[key] = price if lower is None else price.layered_over(lower)
            if price.input is not None and price.output is not None:
                from_below.discard((table, key))
    return BundledPrices(tables, frozenset(from_below))
