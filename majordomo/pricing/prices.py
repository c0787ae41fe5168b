# -*- test-case-name: tests.test_pricing -*-
"""
What a price is: L{ModelPrice} (C{Decimal} USD per token, with long-context
and service tiers), the tables every price source is read into, and the two
names every source and lookup agree on: a model id's price-table form
(L{normalise_model}) and a reported service tier's (L{service_tier_name}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from decimal import Decimal

# Price fields of a ModelPrice, in the order they are shown.
PRICE_FIELDS = (
    "input",
    "output",
    "cached_input",
    "cache_write_5m",
    "cache_write_1h",
    "cache_write",
    "input_audio",
    "output_audio",
)
# The most output tokens a model's limit, or a request's own cap, can
# sensibly be: 16 Mi, sixteen times the largest output limit any model had
# when this was written (Gemini's 1 Mi).  A larger number is a typo or a
# hostile value, not a limit.
MAX_SANE_OUTPUT_TOKENS = 2**24


class PricingError(Exception):
    """Price data that cannot be used: malformed, negative or unknown fields."""


@dataclass(frozen=True)
class PriceTier:
    """
    Prices for a whole request whose prompt is strictly above a size.

    C{price} holds only what the tier changes; a bucket it leaves as C{None}
    costs the base price.
    """

    above_input_tokens: int
    price: ModelPrice


@dataclass(frozen=True)
class ModelPrice:
    """
    What one model costs, as C{Decimal} USD per token; C{None} means unknown.

    C{cache_write} is the price of cache writes that carry no TTL split
    (OpenAI GPT-5.6+); Anthropic's writes are C{cache_write_5m} and
    C{cache_write_1h}.

    C{tiers} are long-context tiers.  C{service_tiers} maps a service tier the
    provider reports in its answer (C{"flex"}, C{"priority"}, C{"batch"}) to
    that tier's prices, with long-context tiers of their own.  A service tier
    is priced by its own prices only: a bucket the standard tier prices but
    the service tier does not has no price at that tier (see
    L{ModelPrice.service_tier_gaps}), never the standard one.

    C{max_output_tokens} is not a price: the most tokens the model answers
    with (LiteLLM's C{max_output_tokens}), which bounds what a request
    without a cap of its own can cost (L{majordomo.policy.estimate}).  It is
    layered like a price, so a price layered over this one keeps it, but it
    is not in L{PRICE_FIELDS} and never makes a price non-empty.
    """

    input: Decimal | None = None
    output: Decimal | None = None
    cached_input: Decimal | None = None
    cache_write_5m: Decimal | None = None
    cache_write_1h: Decimal | None = None
    cache_write: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None
    tiers: tuple[PriceTier, ...] = ()
    service_tiers: tuple[tuple[str, ModelPrice], ...] = ()
    max_output_tokens: int | None = None

    def layered_over(self, below: ModelPrice) -> ModelPrice:
        """
        These prices where they are set, C{below}'s elsewhere: field by field,
        long-context tier by threshold, service tier by name (and the
        model's C{max_output_tokens} likewise).
        """
        merged = {}
        for name in PRICE_FIELDS:
            value = getattr(self, name)
            merged[name] = getattr(below, name) if value is None else value
        tiers = {tier.above_input_tokens: tier for tier in below.tiers}
        for tier in self.tiers:
            lower = tiers.get(tier.above_input_tokens)
            price = tier.price if lower is None else tier.price.layered_over(lower.price)
            tiers[tier.above_input_tokens] = PriceTier(tier.above_input_tokens, price)
        services = dict(below.service_tiers)
        for name, price in self.service_tiers:
            lower_price = services.get(name)
            services[name] = price if lower_price is None else price.layered_over(lower_price)
        return ModelPrice(
            **merged,
            tiers=tuple(tiers[n] for n in sorted(tiers)),
            service_tiers=tuple(sorted(services.items())),
            max_output_tokens=(
                below.max_output_tokens
                if self.max_output_tokens is None
                else self.max_output_tokens
            ),
        )

    def tier_for(self, prompt_tokens: int) -> PriceTier | None:
        """The tier with the largest threshold C{prompt_tokens} is strictly above."""
        crossed = [tier for tier in self.tiers if prompt_tokens > tier.above_input_tokens]
        return max(crossed, key=lambda tier: tier.above_input_tokens, default=None)

    def tier_above(self, threshold: int | None) -> PriceTier | None:
        """The long-context tier of exactly C{threshold}, if this price has one."""
        return next((t for t in self.tiers if t.above_input_tokens == threshold), None)

    def at_tier(self, tier: PriceTier | None) -> ModelPrice:
        """The flat prices every bucket of a request in C{tier} is charged."""
        base = replace(self, tiers=(), service_tiers=())
        return base if tier is None else replace(tier.price, tiers=()).layered_over(base)

    def service_tier(self, name: str) -> ModelPrice | None:
        """The prices of service tier C{name}, or C{None} if it has none."""
        return next((price for tier, price in self.service_tiers if tier == name), None)

    def service_tier_gaps(self, tier: ModelPrice, threshold: int | None) -> frozenset[str]:
        """
        The price fields a request above C{threshold} prompt tokens (C{None}:
        below every tier) has at the standard tier but not at service tier
        C{tier}: buckets whose price at that tier is unknown.
        """
        gaps = set(price_fields(self)) - set(price_fields(tier))
        if (standard_tier := self.tier_above(threshold)) is not None:
            served_tier = tier.tier_above(threshold)
            served = set() if served_tier is None else set(price_fields(served_tier.price))
            gaps |= set(price_fields(standard_tier.price)) - served
        return frozenset(gaps)

    def is_empty(self) -> bool:
        """True if no price at all is known."""
        return (
            not self.tiers
            and not self.service_tiers
            and all(getattr(self, name) is None for name in PRICE_FIELDS)
        )


# Every table is a mapping of price table -> normalised model id -> price.
PriceTables = dict[str, dict[str, ModelPrice]]

# Service tiers a response may report that are priced at the model's own
# (standard) prices: OpenAI "default" (and the "auto" a request sends, echoed
# back by early stream events), Anthropic and Gemini "standard", Gemini
# "unspecified" (google-genai's ServiceTier: "default ..., which is
# standard"), Vertex trafficType "ON_DEMAND" (or unspecified).
STANDARD_SERVICE_TIERS = frozenset(
    {"default", "standard", "auto", "unspecified", "on_demand", "traffic_type_unspecified"}
)
# Reported names that are another name of a priced tier: OpenAI reports a
# "fast" request back as "priority" (USAGE-SPEC.md 2.1), Vertex's trafficType.
_SERVICE_TIER_ALIASES = {
    "fast": "priority",
    "on_demand_priority": "priority",
    "on_demand_flex": "flex",
}


def service_tier_name(reported: str | None) -> str | None:
    """
    The price-table name of a reported service tier, or C{None} for the
    standard tier (also when nothing was reported).
    """
    name = (reported or "").strip().lower()
    if not name or name in STANDARD_SERVICE_TIERS:
        return None
    return _SERVICE_TIER_ALIASES.get(name, name)


_MODEL_PREFIXES = (
    "models/",
    "publishers/google/models/",
    "openai/",
    "anthropic/",
    "gemini/",
    "google/",
    "azure/",
)
_VERTEX_PATH = re.compile(r"^projects/[^/]+/locations/[^/]+/publishers/[^/]+/models/")
_BEDROCK = re.compile(
    r"^(?:(?:us|eu|apac|au|jp|global)\.)?anthropic\.(?P<model>.+?)(?:-v\d+(?::\d+)?|:\d+)?$"
)


def normalise_model(raw: str) -> str:
    """
    The price-table form of a model id (USAGE-SPEC.md section 6.2): lower case,
    without provider or path prefixes, Vertex C{@version} as C{-version},
    Bedrock decorations dropped, and a fine-tune reduced to C{ft:<base>}.
    """
    key = _VERTEX_PATH.sub("", raw.strip().lower())
    while prefix := next((p for p in _MODEL_PREFIXES if key.startswith(p)), None):
        key = key[len(prefix) :]
    if key.startswith("ft:"):
        # ft:<base>:<org>:<name>:<id> is priced as its base model's fine-tune.
        key = "ft:" + key.split(":")[1]
    name, at, version = key.partition("@")
    if at:
        key = name if version in ("", "default") else f"{name}-{version}"
    if bedrock := _BEDROCK.match(key):
        key = bedrock["model"]
    return key


def decimal_price(value: object, where: str) -> Decimal:
    """A finite, non-negative price read from JSON or YAML, as Decimal."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise PricingError(f"{where}: price {value!r} is not a number")
    # str() of a float is its shortest exact repr: 0.3 -> Decimal("0.3").
    number = value if isinstance(value, Decimal) else Decimal(str(value))
    if not number.is_finite() or number < 0:
        raise PricingError(f"{where}: price {value!r} must be a non-negative number")
    return number


def per_million(value: object, where: str) -> Decimal:
    """A USD-per-million price as USD per token (exact: a decimal shift)."""
    return decimal_price(value, where).scaleb(-6)


def sane_token_limit(value: object) -> int | None:
    """
    C{value} as a token limit when it is one: an int (not a bool) from 1 to
    L{MAX_SANE_OUTPUT_TOKENS}; else C{None}.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value <= MAX_SANE_OUTPUT_TOKENS else None


def price_fields(price: ModelPrice) -> dict[str, Decimal]:
    """The prices that are set, by field name, in display order."""
    return {name: value for name in PRICE_FIELDS if (value := getattr(price, name)) is not None}


@dataclass(frozen=True)
class PriceMatch:
    """
    The price found for a model id.

    C{match_kind} is C{"exact"}, C{"override"} (the operator's price applies to
    the id as given) or C{"snapshot_fallback"} (found only after stripping a
    snapshot suffix: worth an alert, as snapshots can be priced differently).
    C{source} names the highest layer that set any of these prices;
    C{sources} lists every layer that did, highest first.  C{retired} is set
    when the shipped price is a retired model's last known one: where and
    when it was last published.
    """

    pricing_key: str
    match_kind: str
    price: ModelPrice
    source: str
    sources: tuple[str, ...] = ()
    retired: str | None = None
