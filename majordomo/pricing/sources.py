# -*- test-case-name: tests.test_pricing -*-
"""
Where prices come from, read into one shape.

Three sources feed the price book (USAGE-SPEC.md section 7): LiteLLM's table
(bundled in the package, or fetched), llm-prices.com's C{current-v1} feed
(fetched only: it carries no licence), and the operator's overrides file.  Each
is read here into L{ModelPrice} records holding C{Decimal} USD per token, keyed
by price table (C{"openai"}, C{"azure"}, C{"anthropic"}, C{"gemini"}) and by
normalised model id, so that every source meets model ids the same way.
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
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool

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

# Price tables by the LiteLLM provider their entries carry.
_LITELLM_TABLES = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "azure": "azure",
}

# llm-prices vendors we route, and the price table each one updates.
_LLM_PRICES_TABLES = {"openai": "openai", "anthropic": "anthropic", "google": "gemini"}

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

    def layered_over(self, below: ModelPrice) -> ModelPrice:
        """
        These prices where they are set, C{below}'s elsewhere: field by field,
        long-context tier by threshold, service tier by name.
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


class RemotePrices(PriceTables):
    """
    Prices read from a remote source, with the version the source declares
    (C{"llm-prices 2026-08-05"}), or C{None} when it declares none.
    """

    version: str | None = None


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


def _decimal(value: object, where: str) -> Decimal:
    """A finite, non-negative price read from JSON or YAML, as Decimal."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise PricingError(f"{where}: price {value!r} is not a number")
    # str() of a float is its shortest exact repr: 0.3 -> Decimal("0.3").
    number = value if isinstance(value, Decimal) else Decimal(str(value))
    if not number.is_finite() or number < 0:
        raise PricingError(f"{where}: price {value!r} must be a non-negative number")
    return number


def _per_million(value: object, where: str) -> Decimal:
    """A USD-per-million price as USD per token (exact: a decimal shift)."""
    return _decimal(value, where).scaleb(-6)


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
    tiers and its service tiers (C{*_flex}, C{*_above_{N}k_tokens_priority}, ...).
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
        found.setdefault((service, threshold), {})[name] = _decimal(
            value, f"{key}: {litellm_field}"
        )

    def price_of(service: str | None) -> ModelPrice:
        thresholds = sorted(n for s, n in found if s == service and n is not None)
        tiers = tuple(
            PriceTier(n, ModelPrice(**found[service, n], tiers=(), service_tiers=()))
            for n in thresholds
        )
        return ModelPrice(**found.get((service, None), {}), tiers=tiers, service_tiers=())

    services = sorted({service for service, _ in found if service is not None})
    return replace(price_of(None), service_tiers=tuple((name, price_of(name)) for name in services))


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
            input=_per_million(row.get("input"), f"{where}: input"),
            output=_per_million(row.get("output"), f"{where}: output"),
            cached_input=None if cached is None else _per_million(cached, f"{where}: input_cached"),
        )
        tables.setdefault(table_name, {})[normalise_model(row["id"])] = price
    return tables


def parse_remote_prices(data: bytes) -> RemotePrices:
    """
    Read a fetched price table: llm-prices C{current-v1} or LiteLLM's shape.

    Raises L{PricingError} for anything else, including a table that prices
    none of the providers we route (an empty answer must not look like a table).
    """
    try:
        document = json.loads(data, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as e:
        raise PricingError(f"remote prices are not JSON: {e}") from e
    if not isinstance(document, dict):
        raise PricingError("remote prices are not a JSON object")
    remote = RemotePrices()
    if "prices" in document:
        remote.update(parse_llm_prices(document))
        updated = document.get("updated_at")
        remote.version = f"llm-prices {updated}" if isinstance(updated, str) else "llm-prices"
    else:
        remote.update(parse_litellm(document))
    if not any(remote.values()):
        raise PricingError("remote prices hold no model of a provider we route")
    return remote


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
            prices[name] = _per_million(value, f"{where}: {name}")
        else:
            known = ", ".join(PRICE_FIELDS + nested)
            raise PricingError(f"{where}: unknown field {name!r} (known: {known})")
    return ModelPrice(**prices, tiers=tuple(tiers), service_tiers=tuple(services))


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


def price_fields(price: ModelPrice) -> dict[str, Decimal]:
    """The prices that are set, by field name, in display order."""
    return {name: value for name in PRICE_FIELDS if (value := getattr(price, name)) is not None}


def fetch_url(url: str, timeout: float = 30.0, client: Any = None) -> Deferred[bytes]:
    """
    GET C{url} with C{client} (a treq-like client such as
    C{treq.testing.StubTreq}; default: treq on a fresh, non-persistent
    connection, as a fetch every hour gains nothing from keeping one open)
    and fire with the body; fail unless it is a 200.
    """
    if client is None:
        from twisted.internet import reactor

        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def body(response: Any) -> Deferred[bytes]:
        if response.code != 200:
            raise PricingError(f"{url} answered HTTP {response.code}")
        content: Deferred[bytes] = response.content()
        return content

    fetched: Deferred[Any] = client.get(url, timeout=timeout)
    return fetched.addCallback(body)
