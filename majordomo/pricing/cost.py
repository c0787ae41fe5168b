# -*- test-case-name: tests.test_pricing -*-
"""
What a request cost, from the price found for its model and its usage:
USAGE-SPEC.md section 8 in C{Decimal} USD.  An unknown price or token count
gives an unknown (C{None}) cost, never zero.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

from twisted.logger import Logger

from majordomo.logtext import printable
from majordomo.pricing.prices import ModelPrice, PriceMatch, PriceTier, service_tier_name
from majordomo.usage import ERROR_NOT_BILLED, Usage

log = Logger()

ZERO = Decimal(0)


@dataclass(frozen=True)
class Cost:
    """
    What a request cost in USD, or C{None} where that is unknown.

    C{priced} says a price was found for the model; C{pricing_tier} is
    C{"base"}, a long-context tier such as C{">200k"}, or C{None} when the
    prompt size (and so the tier) is unknown.  C{unpriced_service_tier}
    names the service tier the answer reported when the model has no price
    at that tier (the costs are then C{None}, never the standard price).
    """

    input_cost: Decimal | None
    output_cost: Decimal | None
    total_cost: Decimal | None
    pricing_key: str | None
    pricing_tier: str | None
    price_source: str | None
    priced: bool
    match_kind: str | None = None
    unpriced_service_tier: str | None = None


# Distinct (provider, model, service tier) without a price warned about; the
# names come from upstreams, so the set must not grow without end.
MAX_UNPRICED_SERVICE_TIERS = 1000
_TIER_NAME_LIMIT = 40


class UnpricedServiceTiers:
    """
    The service tiers a book found no price for, each warned about once (the
    first L{MAX_UNPRICED_SERVICE_TIERS} of them), shared by the books derived
    from one another so that a price refresh does not repeat the warnings.
    """

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, str]] = set()

    def note(self, provider: str, pricing_key: str, tier: str) -> None:
        """Warn about the first request of C{pricing_key} at C{tier}."""
        key = (provider, pricing_key, tier[:_TIER_NAME_LIMIT])
        if key in self.seen or len(self.seen) >= MAX_UNPRICED_SERVICE_TIERS:
            return
        self.seen.add(key)
        log.warn(
            "No price for service tier {tier} of {model} on {provider}: its cost is "
            "recorded as NULL (add service_tiers: {{{tier}: ...}} for {model} to "
            "pricing.overrides_file, then run majordomo reprice)",
            tier=printable(tier, _TIER_NAME_LIMIT),
            model=pricing_key,
            provider=provider,
        )
        if len(self.seen) == MAX_UNPRICED_SERVICE_TIERS:
            log.warn(
                "{count} service tiers have no price; not warning about more",
                count=MAX_UNPRICED_SERVICE_TIERS,
            )


def usage_cost(
    match: PriceMatch | None, provider: str, usage: Usage, unpriced: UnpricedServiceTiers
) -> Cost:
    """
    What C{usage} cost, priced as the model the usage reports at the
    service tier the answer reports.

    An C{error_not_billed} request costs 0 even for an unknown model.  An
    unknown model or input count gives C{None} costs (never 0).  If the
    output count is unknown (a cut stream), the input cost is still given.
    A bucket with tokens but no price makes its side's cost C{None}; in
    particular cache reads are never charged at the input price when the
    cache-read price is missing (that would overcharge about 10x), so such
    a request has no input or total cost until an override supplies it.
    A service tier (C{flex}, C{priority}, ...) is charged its own prices
    only: a tier the model has no price for gives C{None} costs and one
    warning, never the standard price.  C{match} is the price found for
    the model (C{None}: none); C{unpriced} warns about a service tier once.
    """
    if usage.usage_status == ERROR_NOT_BILLED:
        return _cost(match, ZERO, ZERO, "base")
    if match is None or usage.input_tokens is None:
        return _cost(match, None, None, None)
    prompt_tokens = usage.input_tokens
    if provider == "gemini":
        # Gemini's tiers are measured on promptTokenCount, without tool-use tokens.
        prompt_tokens -= usage.tool_use_prompt_tokens or 0
    served = service_tier_name(usage.service_tier)
    if served is None:
        tier = match.price.tier_for(prompt_tokens)
        price = match.price.at_tier(tier)
        input_cost = _input_cost(provider, price, frozenset(), usage)
        return _cost(match, input_cost, _output_cost(price, frozenset(), usage), _tier_name(tier))
    served_price = match.price.service_tier(served)
    if served_price is None:
        unpriced.note(provider, match.pricing_key, served)
        return replace(_cost(match, None, None, None), unpriced_service_tier=served)
    at = _ServedPrice.of(match.price, served_price, prompt_tokens)
    input_cost = _input_cost(provider, at.price, at.gaps, usage)
    output_cost = _output_cost(at.price, at.gaps, usage)
    cost = _cost(match, input_cost, output_cost, _tier_name(at.tier))
    if at.gaps and (input_cost, output_cost) != at.costs_without_gaps(provider, usage):
        # The tier is priced, but not for a bucket this request used.
        unpriced.note(provider, match.pricing_key, served)
        cost = replace(cost, unpriced_service_tier=served)
    return cost


@dataclass(frozen=True)
class _ServedPrice:
    """
    The flat prices of a request at a service tier: C{price}, the long-context
    C{tier} crossed, and the C{gaps} (fields the standard tier prices at that
    size, in C{standard}, and the service tier does not).
    """

    price: ModelPrice
    tier: PriceTier | None
    gaps: frozenset[str]
    standard: ModelPrice

    @classmethod
    def of(cls, standard: ModelPrice, served: ModelPrice, prompt_tokens: int) -> _ServedPrice:
        # The threshold crossed is the largest either tier list has.
        crossed = (standard.tier_for(prompt_tokens), served.tier_for(prompt_tokens))
        tier = max(filter(None, crossed), key=lambda t: t.above_input_tokens, default=None)
        threshold = None if tier is None else tier.above_input_tokens
        return cls(
            served.at_tier(served.tier_above(threshold)),
            tier,
            standard.service_tier_gaps(served, threshold),
            standard.at_tier(standard.tier_above(threshold)),
        )

    def costs_without_gaps(
        self, provider: str, usage: Usage
    ) -> tuple[Decimal | None, Decimal | None]:
        """
        The costs had the gaps been priced (at any price: the standard one
        here), to tell a cost unknown for want of them from one unknown anyway.
        """
        filled = replace(self.price, **{name: getattr(self.standard, name) for name in self.gaps})
        return (
            _input_cost(provider, filled, frozenset(), usage),
            _output_cost(filled, frozenset(), usage),
        )


def _cost(
    match: PriceMatch | None,
    input_cost: Decimal | None,
    output_cost: Decimal | None,
    tier: str | None,
) -> Cost:
    """A Cost and the price it came from; the total is known only if both sides are."""
    total = None if input_cost is None or output_cost is None else input_cost + output_cost
    if match is None:
        return Cost(input_cost, output_cost, total, None, tier, None, priced=False)
    return Cost(
        input_cost,
        output_cost,
        total,
        match.pricing_key,
        tier,
        match.source,
        True,
        match.match_kind,
    )


def _charge(buckets: list[tuple[int, Decimal | None]]) -> Decimal | None:
    """Sum of tokens x price; None if a bucket is negative or has tokens but no price."""
    total = ZERO
    for tokens, price in buckets:
        if tokens < 0 or (tokens and price is None):
            return None
        if tokens:
            assert price is not None
            total += tokens * price
    return total


def _bucket(
    price: ModelPrice, gaps: frozenset[str], *fields: str, fallback: Decimal | None = None
) -> Decimal | None:
    """
    The first of C{fields} C{price} sets, else C{fallback}; C{None} (no price)
    if that field is one of the service tier's C{gaps}: the tier does not
    price a bucket the standard tier does.
    """
    for name in fields:
        if name in gaps:
            return None
        if (value := getattr(price, name)) is not None:
            return value
    return fallback


def _input_cost(
    provider: str, price: ModelPrice, gaps: frozenset[str], usage: Usage
) -> Decimal | None:
    """Uncached text, input audio, cache reads and cache writes, each at its own price."""
    assert usage.input_tokens is not None
    write_5m = usage.cache_creation_5m_tokens or 0
    write_1h = usage.cache_creation_1h_tokens or 0
    writes = usage.cache_creation_tokens
    if writes is None:
        writes = write_5m + write_1h
    cached = usage.cached_tokens or 0
    audio = usage.input_audio_tokens or 0
    text = _bucket(price, gaps, "input")
    # Writes without a TTL split: OpenAI's have their own price (GPT-5.6+) or
    # none (the plain input price); Anthropic's default TTL is 5 minutes.
    write_fields = (
        ("cache_write", "cache_write_5m") if provider == "anthropic" else ("cache_write",)
    )
    return _charge(
        [
            (usage.input_tokens - cached - writes - audio, text),
            (audio, _bucket(price, gaps, "input_audio", fallback=text)),
            (cached, _bucket(price, gaps, "cached_input")),
            (write_5m, _bucket(price, gaps, "cache_write_5m")),
            (write_1h, _bucket(price, gaps, "cache_write_1h")),
            (writes - write_5m - write_1h, _bucket(price, gaps, *write_fields, fallback=text)),
        ]
    )


def _output_cost(price: ModelPrice, gaps: frozenset[str], usage: Usage) -> Decimal | None:
    """Output text (reasoning included) and output audio, each at its own price."""
    if usage.output_tokens is None:
        return None
    audio = usage.output_audio_tokens or 0
    text = _bucket(price, gaps, "output")
    return _charge(
        [
            (usage.output_tokens - audio, text),
            (audio, _bucket(price, gaps, "output_audio", fallback=text)),
        ]
    )


def _tier_name(tier: PriceTier | None) -> str:
    """C{"base"}, or the tier's threshold as C{">200k"}."""
    if tier is None:
        return "base"
    n = tier.above_input_tokens
    return f">{n // 1000}k" if n % 1000 == 0 else f">{n}"
