"""
Tests for L{majordomo.pricing.retired}: the shipped last prices of models
LiteLLM's live table dropped, their provenance, their corrections, and the
retired-model vectors (tests/vectors 150-179) priced from them alone.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from importlib import resources
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from majordomo.pricing import PriceBook
from majordomo.pricing.litellm import parse_litellm
from majordomo.pricing.prices import ModelPrice, PricingError
from majordomo.pricing.retired import (
    RETIRED_FILE,
    RetiredPrices,
    add,
    correct,
    load_retired,
    parse_retired,
)
from majordomo.usage import Usage
from tests.vectors import TOKEN_FIELDS, expected_costs, load_vector, vector_files

# Real answers from these models were stored with cost NULL (issue 12).
REPORTED = [
    ("gemini", "gemini-2.0-flash"),
    ("gemini", "gemini-2.0-flash-exp"),
    ("gemini", "gemini-1.5-flash"),
    ("gemini", "gemini-3-pro-preview"),
    ("anthropic", "claude-3-opus-20240229"),
    ("openai", "gpt-4.5-preview-2025-02-27"),
    ("openai", "o1-mini-2024-09-12"),
]

# The families whose dated snapshots, previews and aliases must all be there.
EXPECTED_IDS = REPORTED + [
    ("gemini", "gemini-1.5-pro-002"),
    ("gemini", "gemini-1.5-flash-8b"),
    ("gemini", "gemini-2.0-flash-001"),
    ("gemini", "gemini-2.0-flash-lite-001"),
    ("gemini", "gemini-2.5-pro-preview-06-05"),
    ("gemini", "gemini-2.5-flash-preview-05-20"),
    ("anthropic", "claude-3-5-sonnet-20241022"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("anthropic", "claude-3-7-sonnet-20250219"),
    ("anthropic", "claude-3-haiku-20240307"),
    ("anthropic", "claude-2.1"),
    ("openai", "o1-preview-2024-09-12"),
    ("openai", "gpt-4-0125-preview"),
    ("openai", "gpt-4-32k-0613"),
    ("openai", "gpt-4o-realtime-preview-2024-12-17"),
    ("openai", "chatgpt-4o-latest"),
    ("azure", "o1-preview"),
    # Never in LiteLLM for our providers: from retired-additions.yaml.
    ("anthropic", "claude-2.0"),
    ("anthropic", "claude-sonnet-4-0"),
    ("gemini", "gemini-1.0-pro-001"),
    ("gemini", "gemini-exp-1121"),
    ("openai", "text-davinci-002"),
]

MILLION = Decimal(1_000_000)


def retired_vectors() -> list[dict[str, Any]]:
    """Our vectors of answers from retired models (numbered 150-179)."""
    vectors = [
        load_vector(path)
        for path in vector_files()
        if 150 <= int(os.path.basename(path).split("_")[0]) <= 179
    ]
    assert vectors, "no retired-model vectors in tests/vectors"
    return vectors


def shipped_entries() -> dict[str, Any]:
    """The raw entries of the shipped retired-prices file."""
    data = resources.files("majordomo").joinpath(RETIRED_FILE).read_bytes()
    entries: dict[str, Any] = json.loads(data, parse_float=Decimal)
    return entries


def bundled_litellm() -> dict[str, dict[str, ModelPrice]]:
    """The current bundled LiteLLM table, without corrections or retired models."""
    data = resources.files("majordomo").joinpath("data/litellm-model-prices.json").read_bytes()
    return parse_litellm(json.loads(data, parse_float=Decimal))


class LoadRetiredTests(SynchronousTestCase):
    """The shipped retired prices load, cover what was reported, and say where they came from."""

    def setUp(self) -> None:
        self.retired = load_retired()

    def test_reported_models_priced(self) -> None:
        """Each model whose real answers got cost NULL has an input and output price."""
        for table, model in REPORTED:
            price = self.retired.tables[table][model]
            self.assertIsNotNone(price.input, model)
            self.assertIsNotNone(price.output, model)

    def test_families_covered(self) -> None:
        """Dated snapshots, previews and -latest aliases of the retired families are priced."""
        missing = [ids for ids in EXPECTED_IDS if ids[1] not in self.retired.tables.get(ids[0], {})]
        self.assertEqual(missing, [])

    def test_every_price_has_provenance(self) -> None:
        """Every retired price names its last publication and its source in one line."""
        for table, models in self.retired.tables.items():
            for model in models:
                line = self.retired.provenance[table, model]
                self.assertRegex(line, r"^last published price: .+, source: .+")
                self.assertNotIn("\n", line)
        self.assertEqual(
            self.retired.provenance["anthropic", "claude-3-opus-20240229"],
            "last published price: litellm==1.102.4 (2026-10-08), source: LiteLLM's price "
            "table (model_prices_and_context_window_backup.json) in the PyPI wheel "
            "litellm==1.102.4",
        )

    def test_no_overlap_with_current_table(self) -> None:
        """No retired id is one the current bundled table prices (that one would win anyway)."""
        current = bundled_litellm()
        overlap = [
            (table, model)
            for table, models in self.retired.tables.items()
            for model in models
            if model in current.get(table, {})
        ]
        self.assertEqual(overlap, [])

    def test_prices_sane(self) -> None:
        """
        No price is negative; output never costs less than input; a cache read
        costs at most half the input price (0.1x for Anthropic, at most 0.5x
        for OpenAI's and Gemini's discounts); Anthropic's writes are 1.25x and
        2x the input price where they are given.
        """
        exceptions = {
            # Anthropic rounds Haiku 3's cache prices: $0.03 read, $0.30 5-minute write.
            ("anthropic", "claude-3-haiku-20240307"),
            # LiteLLM's cache read of 0 is unverified (RETIRED.md, "Left as LiteLLM had them").
            ("gemini", "gemini-robotics-er-1.5-preview"),
        }
        for table, models in self.retired.tables.items():
            for model, price in models.items():
                if (table, model) in exceptions:
                    continue
                where = f"{table}/{model}"
                assert price.input is not None and price.output is not None, where
                self.assertGreaterEqual(price.input, 0, where)
                self.assertGreaterEqual(price.output, price.input, where)
                if price.cached_input is not None and price.input:
                    ratio = price.cached_input / price.input
                    self.assertGreater(ratio, 0, where)
                    self.assertLessEqual(ratio, Decimal("0.5"), where)
                if table == "anthropic":
                    if price.cached_input is not None:
                        self.assertEqual(price.cached_input, price.input / 10, where)
                    if price.cache_write_5m is not None:
                        self.assertEqual(price.cache_write_5m, price.input * Decimal("1.25"), where)
                    if price.cache_write_1h is not None:
                        self.assertEqual(price.cache_write_1h, price.input * 2, where)

    def test_spot_prices(self) -> None:
        """The reported models cost what their providers last charged, per million tokens."""
        expected = {
            ("anthropic", "claude-3-opus-20240229"): ("15", "75", "1.5"),
            ("openai", "gpt-4.5-preview-2025-02-27"): ("75", "150", "37.5"),
            ("openai", "o1-mini-2024-09-12"): ("1.1", "4.4", "0.55"),
            ("gemini", "gemini-2.0-flash"): ("0.1", "0.4", "0.025"),
            ("gemini", "gemini-1.5-flash"): ("0.075", "0.3", "0.01875"),
            ("gemini", "gemini-3-pro-preview"): ("2", "12", "0.2"),
            # Experimental Gemini models were free.
            ("gemini", "gemini-2.0-flash-exp"): ("0", "0", "0"),
        }
        for (table, model), prices in expected.items():
            price = self.retired.tables[table][model]
            self.assertEqual(
                (price.input, price.output, price.cached_input),
                tuple(Decimal(p) / MILLION for p in prices),
                model,
            )

    def test_long_context_tiers_kept(self) -> None:
        """Retired Gemini long-context rates survive: 1.5 above 128k, 3 Pro above 200k."""
        flash = self.retired.tables["gemini"]["gemini-1.5-flash"]
        (tier,) = flash.tiers
        self.assertEqual(tier.above_input_tokens, 128_000)
        self.assertEqual(tier.price.input, Decimal("0.15") / MILLION)
        self.assertEqual(tier.price.cached_input, Decimal("0.0375") / MILLION)
        pro = self.retired.tables["gemini"]["gemini-3-pro-preview"]
        (tier,) = pro.tiers
        self.assertEqual(tier.above_input_tokens, 200_000)
        self.assertEqual(tier.price.output, Decimal(18) / MILLION)

    def test_corrected_provenance(self) -> None:
        """A corrected price says where the right price was published and what it corrects."""
        line = self.retired.provenance["openai", "o1-mini-2024-09-12"]
        self.assertIn("o1-mini (price cut of 2025-01-31)", line)
        self.assertIn("corrects LiteLLM's price table", line)
        self.assertIn("litellm==1.82.0", line)

    def test_entries_carry_their_version(self) -> None:
        """Each shipped entry names the LiteLLM release it was last seen in, with its date."""
        for key, entry in shipped_entries().items():
            self.assertRegex(
                entry["majordomo_last_seen"], r"^litellm==\d+\.\d+\.\d+ \(\d{4}-\d\d-\d\d\)$", key
            )
            self.assertIn(entry["majordomo_last_seen"].split()[0], entry["majordomo_source"], key)


class CorrectTests(SynchronousTestCase):
    """Corrections layer over retired entries and refuse what they cannot apply."""

    def retired(self) -> RetiredPrices:
        return parse_retired(
            {
                "old-model": {
                    "litellm_provider": "openai",
                    "input_cost_per_token": Decimal("0.000003"),
                    "output_cost_per_token": Decimal("0.000012"),
                    "majordomo_last_seen": "litellm==1.0.0 (2025-01-01)",
                    "majordomo_source": "a wheel",
                }
            }
        )

    def test_layered_per_field(self) -> None:
        """A correction changes the fields it names and keeps the rest."""
        corrected = correct(
            self.retired(),
            {"openai": {"old-model": {"input": 1.1, "published": "p", "source": "s"}}},
        )
        price = corrected.tables["openai"]["old-model"]
        self.assertEqual(price.input, Decimal("1.1") / MILLION)
        self.assertEqual(price.output, Decimal(12) / MILLION)
        self.assertEqual(
            corrected.provenance["openai", "old-model"],
            "last published price: p, source: s (corrects a wheel)",
        )

    def test_unknown_model_refused(self) -> None:
        """A correction of a model the file lacks is an error, not a silent new price."""
        self.assertRaises(
            PricingError,
            correct,
            self.retired(),
            {"openai": {"other": {"input": 1, "published": "p", "source": "s"}}},
        )

    def test_source_required(self) -> None:
        """A correction must say where its price was published and why."""
        self.assertRaises(
            PricingError, correct, self.retired(), {"openai": {"old-model": {"input": 1}}}
        )


class AddTests(SynchronousTestCase):
    """Additions price models LiteLLM never listed, and only those."""

    def retired(self) -> RetiredPrices:
        return parse_retired(
            {
                "old-model": {
                    "litellm_provider": "openai",
                    "input_cost_per_token": Decimal("0.000003"),
                    "output_cost_per_token": Decimal("0.000012"),
                }
            }
        )

    def test_added(self) -> None:
        """An addition is priced, with its own provenance line."""
        added = add(
            self.retired(),
            {"gemini": {"models/new-model": {"input": 0.5, "published": "p", "source": "s"}}},
        )
        self.assertEqual(added.tables["gemini"]["new-model"].input, Decimal("0.5") / MILLION)
        self.assertEqual(
            added.provenance["gemini", "new-model"], "last published price: p, source: s"
        )
        self.assertIn("old-model", added.tables["openai"])

    def test_present_refused(self) -> None:
        """Adding a model the retired file already prices is an error: that is a correction."""
        self.assertRaises(
            PricingError,
            add,
            self.retired(),
            {"openai": {"old-model": {"input": 1, "published": "p", "source": "s"}}},
        )


class RetiredVectorTests(SynchronousTestCase):
    """The retired-model vectors are priced exactly from the shipped retired prices."""

    def test_prices_used_are_shipped(self) -> None:
        """Each vector's C{prices_used} are the retired layer's prices for its model."""
        retired = load_retired()
        for vector in retired_vectors():
            prices = vector["prices_used"]
            model = vector["expected"]["model"]
            price = retired.tables[vector["provider"]][model]
            tier = price.at_tier(price.tier_for(vector["expected"]["input_tokens"]))
            for name in ("input", "output", "cached_input"):
                self.assertEqual(
                    getattr(tier, name),
                    Decimal(str(prices[name])) / MILLION,
                    f"{vector['name']}: {name}",
                )

    def test_costs_from_retired_prices_alone(self) -> None:
        """A book of only the retired prices gives each vector's exact expected costs."""
        book = PriceBook(load_retired().tables, "retired")
        for vector in retired_vectors():
            expected = vector["expected"]
            usage = Usage(
                usage_status=expected["usage_status"],
                model=expected["model"],
                service_tier=expected.get("service_tier"),
                **{name: expected.get(name) for name in TOKEN_FIELDS},
            )
            cost = book.cost(vector["provider"], usage)
            self.assertEqual(
                (cost.input_cost, cost.output_cost, cost.total_cost),
                expected_costs(vector),
                vector["name"],
            )

    def test_bundled_book_prices_reported_models(self) -> None:
        """The shipped price book prices every reported model, from the retired layer."""
        book = PriceBook.bundled()
        for table, model in REPORTED:
            match = book.lookup(table, model)
            assert match is not None, model
            self.assertIsNotNone(match.price.input, model)
