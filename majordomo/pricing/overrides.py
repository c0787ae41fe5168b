# -*- test-case-name: tests.test_pricing -*-
"""
The operator's price overrides (C{pricing.overrides_file}; the bundled
corrections share the shape): model id -> fields in USD per million tokens,
with long-context C{tiers} and C{service_tiers}, read strictly so that a
typo never silently leaves a price unset.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import yaml

from majordomo.pricing.prices import (
    PRICE_FIELDS,
    STANDARD_SERVICE_TIERS,
    ModelPrice,
    PriceTier,
    PricingError,
    normalise_model,
    per_million,
    service_tier_name,
)


def parse_overrides(raw: object, source: str = "price overrides") -> dict[str, ModelPrice]:
    """
    Read operator price overrides: model id -> fields in USD per million tokens
    (the overrides file's shape), keyed by normalised model id.

    Raises L{PricingError} naming the model and field for anything it does not
    understand, so that a typo never silently leaves a price unset.
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PricingError(f"{source}: expected a mapping of model id to prices")
    overrides: dict[str, ModelPrice] = {}
    for model, spec in raw.items():
        if not isinstance(model, str) or not normalise_model(model):
            raise PricingError(f"{source}: {model!r} is not a model id")
        where = f"{source}: {model}"
        key = normalise_model(model)
        if key in overrides:
            raise PricingError(f"{where}: another entry already overrides {key!r}")
        price = _override_price(spec, where, nested=("tiers", "service_tiers"))
        if price.is_empty():
            raise PricingError(f"{where}: no price given")
        overrides[key] = price
    return overrides


def _override_price(spec: object, where: str, nested: tuple[str, ...]) -> ModelPrice:
    """
    One model's (or one tier's) override fields, per million, as a ModelPrice;
    C{nested} names the tier lists this level may hold (C{tiers},
    C{service_tiers}).
    """
    if not isinstance(spec, Mapping):
        raise PricingError(f"{where}: expected a mapping of price fields")
    prices: dict[str, Decimal] = {}
    tiers: list[PriceTier] = []
    services: list[tuple[str, ModelPrice]] = []
    for name, value in spec.items():
        if name == "tiers" and name in nested:
            tiers = _override_tiers(value, f"{where}: tiers")
        elif name == "service_tiers" and name in nested:
            services = _override_service_tiers(value, f"{where}: service_tiers")
        elif name in PRICE_FIELDS:
            prices[name] = per_million(value, f"{where}: {name}")
        else:
            known = ", ".join(PRICE_FIELDS + nested)
            raise PricingError(f"{where}: unknown field {name!r} (known: {known})")
    # An override states no output limit: the one of the price below it applies.
    return ModelPrice(
        **prices, tiers=tuple(tiers), service_tiers=tuple(services), max_output_tokens=None
    )


def _override_service_tiers(value: object, where: str) -> list[tuple[str, ModelPrice]]:
    """
    The C{service_tiers:} mapping of an override: tier name (as the provider
    reports it) -> price fields, with C{tiers:} of its own.
    """
    if not isinstance(value, Mapping):
        raise PricingError(f"{where}: expected a mapping of service tier to prices")
    services: dict[str, ModelPrice] = {}
    for name, spec in value.items():
        key = service_tier_name(name) if isinstance(name, str) else None
        if not key or key in STANDARD_SERVICE_TIERS:
            raise PricingError(
                f"{where}: {name!r} is not a service tier name "
                "(the standard tier's prices are the model's own)"
            )
        if key in services:
            raise PricingError(f"{where}: service tier {key!r} given twice")
        price = _override_price(spec, f"{where}: {name}", nested=("tiers",))
        if price.is_empty():
            raise PricingError(f"{where}: {name}: no price given")
        services[key] = price
    return sorted(services.items())


def _override_tiers(value: object, where: str) -> list[PriceTier]:
    """The C{tiers:} list of an override, sorted by threshold."""
    if not isinstance(value, list):
        raise PricingError(f"{where}: expected a list of tiers")
    tiers: dict[int, PriceTier] = {}
    for spec in value:
        if not isinstance(spec, Mapping):
            raise PricingError(f"{where}: each tier must be a mapping")
        threshold = spec.get("above_input_tokens")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise PricingError(f"{where}: above_input_tokens must be a non-negative integer")
        if threshold in tiers:
            raise PricingError(f"{where}: two tiers above {threshold} tokens")
        fields_only = {k: v for k, v in spec.items() if k != "above_input_tokens"}
        price = _override_price(fields_only, f"{where}: above {threshold}", nested=())
        tiers[threshold] = PriceTier(threshold, price)
    return [tiers[n] for n in sorted(tiers)]


def load_overrides_file(path: str) -> dict[str, ModelPrice]:
    """Read an overrides YAML file; any problem with it is a L{PricingError}."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise PricingError(f"{path}: cannot read price overrides: {e}") from e
    return parse_overrides(raw, source=path)
