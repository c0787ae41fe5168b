# -*- test-case-name: tests.test_pricing -*-
"""
The price book: which price applies to a request, and (through
L{majordomo.pricing.cost}) what the request cost.

Prices come in layers: the bundled LiteLLM table (L{majordomo.pricing.litellm},
over the retired models' last known prices), then prices fetched from a remote
source (L{majordomo.pricing.sources}), then the operator's overrides
(L{majordomo.pricing.overrides}), each winning over the ones before it field
by field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from majordomo.pricing.cost import Cost, UnpricedServiceTiers, usage_cost
from majordomo.pricing.litellm import load_bundled
from majordomo.pricing.overrides import load_overrides_file, parse_overrides
from majordomo.pricing.prices import ModelPrice, PriceMatch, PriceTables, normalise_model
from majordomo.pricing.retired import load_retired
from majordomo.usage import Usage

if TYPE_CHECKING:
    from majordomo.config import Config

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


# Distinct (provider, model) lookups a book remembers.
_LOOKUPS_KEPT = 4096


class PriceBook:
    """
    Immutable prices for every model we can price; swap the whole book to
    change prices.

    C{tables} and C{remote} map price table (C{"openai"}, C{"azure"},
    C{"anthropic"}, C{"gemini"}) to normalised model id to L{ModelPrice}, as
    the readers of each source (L{majordomo.pricing.litellm},
    L{majordomo.pricing.sources}) produce them.  C{retired}
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
        """
        This book with fetched prices (from
        L{majordomo.pricing.sources.parse_remote_prices}) in place of earlier ones.
        """
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
        What C{usage} cost, priced as the model the usage reports (see
        L{usage_cost}) at the service tier the answer reports.
        """
        return usage_cost(self.lookup(provider, usage.model), provider, usage, self.unpriced_tiers)


class PriceSource(Protocol):
    """
    Where the proxy reads the prices in force: its C{book}, read afresh for
    each request, since a refresh swaps in a whole new book
    (L{majordomo.pricing.refresh.PricingService} is the running one).
    """

    @property
    def book(self) -> PriceBook:
        """The price book in force now."""
        ...


def configured_book(config: Config) -> PriceBook:
    """The bundled table with the configured overrides file on top."""
    book = PriceBook.bundled()
    if config.pricing.overrides_file:
        book = book.with_overrides(load_overrides_file(config.pricing.overrides_file))
    return book
