# -*- test-case-name: tests.test_pricing -*-
"""
The price book: which price applies to a request, and what the request cost.

Prices come in layers (see L{majordomo.pricing.sources}): the bundled LiteLLM
table, then prices fetched from a remote source, then the operator's overrides,
each winning over the ones before it field by field.  Costs follow
USAGE-SPEC.md section 8 in C{Decimal} USD; an unknown price or token count
gives an unknown (C{None}) cost, never zero.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from majordomo.logtext import printable
from majordomo.pricing.retired import load_retired
from majordomo.pricing.sources import (
    ModelPrice,
    PriceTables,
    PriceTier,
    load_bundled,
    normalise_model,
    parse_overrides,
    price_fields,
    service_tier_name,
)
from majordomo.pricing.sources import load_overrides_file as load_overrides_file
from majordomo.usage import ERROR_NOT_BILLED, Usage

if TYPE_CHECKING:
    from majordomo.config import Config

log = Logger()

# Names the bundled table in every cost it prices; change it with the data file.
BUNDLED_VERSION = "litellm-1.110.2+majordomo-1"
OVERRIDE_SOURCE = "override"
# Names a retired model's last known price (majordomo.pricing.retired), the
# layer below the bundled table.
RETIRED_SOURCE = "litellm-retired"

# The price tables each upstream's models are looked up in, in order.
_TABLES = {
    "openai": ("openai",),
    "azure": ("azure", "openai"),
    "anthropic": ("anthropic",),
    "gemini": ("gemini",),
}

# The one snapshot suffix a lookup may strip, per upstream (USAGE-SPEC.md 6.2).
_OPENAI_SNAPSHOT = [(re.compile(r"-\d{4}-\d{2}-\d{2}$"), "")]
_SNAPSHOT_SUFFIXES = {
    "openai": _OPENAI_SNAPSHOT,
    "azure": _OPENAI_SNAPSHOT,
    "anthropic": [(re.compile(r"-\d{8}$"), "")],
    "gemini": [
        (re.compile(r"-\d{3}$"), ""),
        (re.compile(r"-preview-\d{2}-\d{4}$"), "-preview"),
        (re.compile(r"-latest$"), ""),
    ],
}

ZERO = Decimal(0)


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


# Distinct (provider, model) lookups a book remembers.
_LOOKUPS_KEPT = 4096
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


class PriceBook:
    """
    Immutable prices for every model we can price; swap the whole book to
    change prices.

    C{tables} and C{remote} map price table (C{"openai"}, C{"azure"},
    C{"anthropic"}, C{"gemini"}) to normalised model id to L{ModelPrice}, as
    the parsers in L{majordomo.pricing.sources} produce them.  C{retired}
    maps the (table, model id) entries of C{tables} that are retired models'
    last known prices to where and when each was last published.
    """

    def __init__(
        self,
        tables: PriceTables,
        version: str = BUNDLED_VERSION,
        remote: PriceTables | None = None,
        remote_version: str | None = None,
        overrides: Mapping[str, ModelPrice] | None = None,
        unpriced_tiers: UnpricedServiceTiers | None = None,
        retired: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        self.version = version
        self.remote_version = remote_version
        self._tables = tables
        self._remote: PriceTables = remote or {}
        self._overrides: Mapping[str, ModelPrice] = overrides or {}
        self.unpriced_tiers = unpriced_tiers or UnpricedServiceTiers()
        self._retired: Mapping[tuple[str, str], str] = retired or {}
        # lookup() answers, kept because the book never changes; bounded, since
        # model names come from clients and upstreams.
        self._found: dict[tuple[str, str | None], PriceMatch | None] = {}

    @classmethod
    def bundled(cls) -> PriceBook:
        """
        The book of the LiteLLM table shipped with the package, over the
        retired models' last known prices.
        """
        retired = load_retired()
        bundled = load_bundled(retired.tables)
        provenance = {
            entry: retired.provenance.get(entry, "last published price: unknown")
            for entry in bundled.from_below
        }
        return cls(bundled.tables, BUNDLED_VERSION, retired=provenance)

    def __len__(self) -> int:
        """Priced entries across all price tables (OpenAI's and Azure's count apart)."""
        entries = {
            (t, m) for layer in (self._tables, self._remote) for t in layer for m in layer[t]
        }
        listed = {model for _, model in entries}
        return len(entries) + len(set(self._overrides) - listed)

    def with_overrides(self, overrides: Mapping[str, Any]) -> PriceBook:
        """
        This book with the operator's overrides in place of any earlier ones.

        C{overrides} maps model ids to either L{ModelPrice} (as from
        L{load_overrides_file}) or the file's per-million field mappings.
        """
        if not all(isinstance(price, ModelPrice) for price in overrides.values()):
            overrides = parse_overrides(overrides)
        keyed = {normalise_model(model): price for model, price in overrides.items()}
        return PriceBook(
            self._tables,
            self.version,
            self._remote,
            self.remote_version,
            keyed,
            self.unpriced_tiers,
            self._retired,
        )

    def with_remote(self, remote: PriceTables, version: str) -> PriceBook:
        """This book with fetched prices (from L{parse_remote_prices}) in place of earlier ones."""
        return PriceBook(
            self._tables,
            self.version,
            remote,
            version,
            self._overrides,
            self.unpriced_tiers,
            self._retired,
        )

    def lookup(self, provider: str, model: str | None) -> PriceMatch | None:
        """
        The price of C{model} when served by C{provider} (C{"openai"},
        C{"azure"}, C{"anthropic"} or C{"gemini"}), or C{None}.

        The exact id is tried first, then the id without one snapshot suffix.
        Nothing else: no prefix or substring matching, so C{gpt-4o-mini} can
        never be priced as C{gpt-4o}.  Another provider prices nothing.
        """
        try:
            return self._found[provider, model]
        except KeyError:
            pass
        match = self._lookup(provider, model)
        if len(self._found) < _LOOKUPS_KEPT:
            self._found[provider, model] = match
        return match

    def _lookup(self, provider: str, model: str | None) -> PriceMatch | None:
        key = normalise_model(model or "")
        if not key or provider not in _TABLES:
            return None
        candidates = [(key, "exact")]
        for suffix, replacement in _SNAPSHOT_SUFFIXES[provider]:
            base = suffix.sub(replacement, key)
            if base != key:
                candidates.append((base, "snapshot_fallback"))
                break
        for candidate, kind in candidates:
            match = self._find(provider, candidate, kind)
            if match is not None:
                return match
        return None

    def _find(self, provider: str, key: str, kind: str) -> PriceMatch | None:
        """The layered price of exactly C{key}, highest layer first."""
        layers: list[tuple[ModelPrice, str]] = []
        retired = None
        if (override := self._overrides.get(key)) is not None:
            layers.append((override, OVERRIDE_SOURCE))
        for table in _TABLES[provider]:
            remote = self._remote.get(table, {}).get(key)
            bundled = self._tables.get(table, {}).get(key)
            if remote is not None:
                layers.append((remote, self.remote_version or "remote"))
            if bundled is not None:
                retired = self._retired.get((table, key))
                layers.append((bundled, self.version if retired is None else RETIRED_SOURCE))
            if remote is not None or bundled is not None:
                break  # Azure's own price, if it has one, else OpenAI's.
        if not layers:
            return None
        price = layers[-1][0]
        for upper, _ in reversed(layers[:-1]):
            price = upper.layered_over(price)
        sources = tuple(source for _, source in layers)
        if kind == "exact" and sources[0] == OVERRIDE_SOURCE:
            kind = "override"
        return PriceMatch(key, kind, price, sources[0], sources, retired)

    def cost(self, provider: str, usage: Usage) -> Cost:
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
        warning, never the standard price.
        """
        match = self.lookup(provider, usage.model)
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
            return _cost(
                match, input_cost, _output_cost(price, frozenset(), usage), _tier_name(tier)
            )
        served_price = match.price.service_tier(served)
        if served_price is None:
            self.unpriced_tiers.note(provider, match.pricing_key, served)
            return replace(_cost(match, None, None, None), unpriced_service_tier=served)
        at = _ServedPrice.of(match.price, served_price, prompt_tokens)
        input_cost = _input_cost(provider, at.price, at.gaps, usage)
        output_cost = _output_cost(at.price, at.gaps, usage)
        cost = _cost(match, input_cost, output_cost, _tier_name(at.tier))
        if at.gaps and (input_cost, output_cost) != at.costs_without_gaps(provider, usage):
            # The tier is priced, but not for a bucket this request used.
            self.unpriced_tiers.note(provider, match.pricing_key, served)
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


def _first(*prices: Decimal | None) -> Decimal | None:
    """The first price that is known."""
    return next((price for price in prices if price is not None), None)


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


_LABELS = {
    "input": "input",
    "output": "output (incl. reasoning)",
    "cached_input": "cache read",
    "cache_write_5m": "cache write, 5 min TTL",
    "cache_write_1h": "cache write, 1 h TTL",
    "cache_write": "cache write",
    "input_audio": "input audio",
    "output_audio": "output audio",
}
_TIER_BASIS = {
    "openai": "prompt tokens (cached and cache-write tokens included)",
    "azure": "prompt tokens (cached and cache-write tokens included)",
    "anthropic": "input tokens plus cache reads and writes",
    "gemini": "promptTokenCount (cached included, tool-use prompt tokens not)",
}


def _price_lines(price: ModelPrice) -> list[str]:
    """One line per known price, in USD per million tokens."""
    return [
        f"  {_LABELS[name]:<24} {value.scaleb(6).normalize():f}"
        for name, value in price_fields(price).items()
    ]


def _tier_lines(price: ModelPrice, provider: str, indent: str = "") -> list[str]:
    """The long-context tiers of C{price}, each with its prices."""
    lines = []
    for tier in price.tiers:
        lines.append(
            f"{indent}above {tier.above_input_tokens:,} {_TIER_BASIS[provider]}, "
            "the whole request costs:"
        )
        lines.extend(indent + line for line in _price_lines(tier.price))
    return lines


def describe(match: PriceMatch, provider: str) -> str:
    """A human description of a model's prices (USD per million) and their sources."""
    how = {
        "exact": "exact match",
        "override": "operator override",
        "snapshot_fallback": "snapshot fallback: this dated id is not priced, its base id is",
    }[match.match_kind]
    lines = [
        f"{match.pricing_key} on {provider} ({how})",
        f"source: {' over '.join(match.sources) or match.source}",
    ]
    if match.retired is not None:
        lines.append(
            "retired model: the current LiteLLM table no longer lists it, so this is its "
            f"last known price ({match.retired})"
        )
    lines += ["USD per million tokens:", *_price_lines(match.price)]
    if match.price.cached_input is None:
        lines.append("  (no cache-read price: requests with cache reads get no cost)")
    lines.extend(_tier_lines(match.price, provider))
    for name, price in match.price.service_tiers:
        lines.append(f'at service tier "{name}" (as the answer reports it), instead:')
        lines.extend(_price_lines(price))
        lines.extend(_tier_lines(price, provider, "  "))
        for tier in match.price.tiers:
            if price.tier_above(tier.above_input_tokens) is None:
                lines.append(
                    f"  above {tier.above_input_tokens:,} {_TIER_BASIS[provider]}: "
                    "no price at this tier (such requests get no cost)"
                )
    named = ", ".join(f'"{name}"' for name, _ in match.price.service_tiers)
    lines.append(
        f"service tier default/standard (or none reported): the prices above; any other"
        f"{' than ' + named if named else ''} has no price here (such requests get no cost)"
    )
    return "\n".join(lines)


def configured_book(config: Config) -> PriceBook:
    """The bundled table with the configured overrides file on top."""
    book = PriceBook.bundled()
    if config.pricing.overrides_file:
        book = book.with_overrides(load_overrides_file(config.pricing.overrides_file))
    return book
