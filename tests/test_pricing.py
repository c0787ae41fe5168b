"""
Tests for L{majordomo.pricing} and the sources of its prices: the cost
vectors, the bundled table, model matching, overrides and remote price data.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from majordomo import pricing
from majordomo.cli.pricing import describe
from majordomo.pricing import BUNDLED_VERSION, PriceBook
from majordomo.pricing.cost import Cost
from majordomo.pricing.overrides import load_overrides_file, parse_overrides
from majordomo.pricing.prices import ModelPrice, PriceTier, PricingError
from majordomo.pricing.sources import parse_remote_prices
from majordomo.usage import COMPLETE, ERROR_NOT_BILLED, PARTIAL_STREAM_TRUNCATED, Usage
from tests.vectors import (
    TOKEN_FIELDS,
    VECTORS,
    expected_costs,
    load_vector,
    vector_files,
    vector_overrides,
)


def per_million(value: str) -> Decimal:
    """A USD-per-million price as the per-token Decimal the book holds."""
    return Decimal(value) / 1_000_000


def vector_usage(vector: dict[str, Any]) -> Usage:
    """The normalised usage a vector expects, as a Usage."""
    expected = vector["expected"]
    counts = {name: expected.get(name) for name in TOKEN_FIELDS}
    return Usage(
        usage_status=expected["usage_status"],
        model=expected["model"],
        service_tier=expected.get("service_tier"),
        **counts,
    )


def costs(cost: Cost) -> tuple[Decimal | None, ...]:
    """The three costs of a Cost."""
    return (cost.input_cost, cost.output_cost, cost.total_cost)


class VectorTests(SynchronousTestCase):
    """Every test vector in tests/vectors is priced exactly as it expects."""

    def test_vectors_present(self) -> None:
        """The vectors ship in tests/vectors: missing vectors fail, never skip."""
        self.assertTrue(os.path.isdir(VECTORS), f"no test vectors at {VECTORS}")
        self.assertGreaterEqual(len(vector_files()), 24)

    def check_vector(self, path: str) -> None:
        """The vector's own prices, as overrides, give its exact costs and tier."""
        vector = load_vector(path)
        overrides = vector_overrides(vector["prices_used"])
        for book in (PriceBook({}, "empty"), PriceBook.bundled()):
            cost = book.with_overrides(overrides).cost(vector["provider"], vector_usage(vector))
            self.assertEqual(costs(cost), expected_costs(vector))
            if "pricing_tier" in vector["expected"]:
                self.assertEqual(cost.pricing_tier, vector["expected"]["pricing_tier"])

    def test_bundled_table_prices_the_vectors(self) -> None:
        """
        Without overrides, the bundled LiteLLM table gives the vectors' costs,
        tiers and 1-hour writes included (a data refresh may change this).
        """
        book = PriceBook.bundled()
        for path in vector_files():
            name = os.path.basename(path)[:-5]
            vector = load_vector(path)
            cost = book.cost(vector["provider"], vector_usage(vector))
            self.assertEqual(costs(cost), expected_costs(vector), name)


def _add_vector_test(path: str) -> None:
    """Give VectorTests one test method for the vector at C{path}."""
    name = os.path.basename(path)[:-5]

    def test(self: VectorTests) -> None:
        self.check_vector(path)

    test.__doc__ = f"Vector {name}: input, output and total cost equal expected_cost_usd_exact."
    setattr(VectorTests, f"test_vector_{name}", test)


for _path in vector_files():
    _add_vector_test(_path)


class BundledTableTests(SynchronousTestCase):
    """The LiteLLM table shipped in the package, and matching model ids to it."""

    book = PriceBook.bundled()

    def assertPrices(self, provider: str, model: str, input: str, output: str) -> None:
        """C{model} is priced at C{input}/C{output} USD per million."""
        match = self.book.lookup(provider, model)
        assert match is not None, model
        self.assertEqual(
            (match.price.input, match.price.output), (per_million(input), per_million(output))
        )

    def test_loads(self) -> None:
        """The bundled table loads and prices more than 500 models."""
        self.assertGreater(len(self.book), 500)
        self.assertEqual(self.book.version, BUNDLED_VERSION)

    def test_gpt_4o_mini_snapshot(self) -> None:
        """The dated gpt-4o-mini snapshot is priced by an exact match."""
        match = self.book.lookup("openai", "gpt-4o-mini-2024-07-18")
        assert match is not None
        self.assertEqual((match.pricing_key, match.match_kind), ("gpt-4o-mini-2024-07-18", "exact"))
        self.assertPrices("openai", "gpt-4o-mini-2024-07-18", "0.15", "0.6")

    def test_dated_key_first(self) -> None:
        """Snapshots keep their own price: gpt-4o-2024-05-13 is 5/15, -08-06 is 2.5/10."""
        self.assertPrices("openai", "gpt-4o-2024-05-13", "5", "15")
        self.assertPrices("openai", "gpt-4o-2024-08-06", "2.5", "10")

    def test_no_prefix_matching(self) -> None:
        """gpt-4o-mini never gets gpt-4o's price, nor flash-lite flash's, even alone."""
        gpt_4o = ModelPrice(input=per_million("2.5"), output=per_million("10"))
        flash = ModelPrice(input=per_million("0.3"), output=per_million("2.5"))
        only = PriceBook({"openai": {"gpt-4o": gpt_4o}, "gemini": {"gemini-2.5-flash": flash}})
        for provider, model in [
            ("openai", "gpt-4o-mini"),
            ("openai", "gpt-4o-mini-2024-07-18"),
            ("gemini", "gemini-2.5-flash-lite"),
            ("gemini", "gemini-2.5-flash-lite-001"),
        ]:
            self.assertIsNone(only.lookup(provider, model), model)
        self.assertPrices("openai", "gpt-4o-mini", "0.15", "0.6")
        self.assertPrices("gemini", "gemini-2.5-flash-lite", "0.1", "0.4")
        self.assertPrices("gemini", "gemini-2.5-flash", "0.3", "2.5")

    def test_unknown_model(self) -> None:
        """An unknown model costs None, never 0, and has no pricing key."""
        usage = Usage(COMPLETE, model="no-such-model", input_tokens=10, output_tokens=5)
        cost = self.book.cost("openai", usage)
        self.assertEqual(costs(cost), (None, None, None))
        self.assertEqual((cost.pricing_key, cost.priced, cost.price_source), (None, False, None))

    def test_snapshot_fallback(self) -> None:
        """An unlisted snapshot falls back to its base id, flagged, per provider's suffix."""
        for provider, model, key in [
            ("openai", "gpt-4o-2099-01-01", "gpt-4o"),
            ("azure", "gpt-4o-mini-2099-01-01", "gpt-4o-mini"),
            ("anthropic", "claude-opus-4-8-20990101", "claude-opus-4-8"),
            ("gemini", "gemini-2.5-pro-001", "gemini-2.5-pro"),
        ]:
            match = self.book.lookup(provider, model)
            assert match is not None, model
            self.assertEqual((match.pricing_key, match.match_kind), (key, "snapshot_fallback"))

    def test_snapshot_fallback_strips_one_suffix(self) -> None:
        """Only one snapshot suffix is stripped, and only the provider's own kind."""
        self.assertIsNone(self.book.lookup("openai", "gpt-4o-2099-01-01-2099-01-01"))
        self.assertIsNone(self.book.lookup("openai", "claude-opus-4-8-20990101"))
        self.assertIsNone(self.book.lookup("anthropic", "gpt-4o-2099-01-01"))

    def test_prefixes_stripped(self) -> None:
        """Path and provider prefixes, case, Vertex @versions and fine-tune ids are normalised."""
        for provider, model, key in [
            ("gemini", "models/gemini-2.5-flash", "gemini-2.5-flash"),
            ("gemini", " Gemini/Gemini-2.5-Pro ", "gemini-2.5-pro"),
            ("gemini", "publishers/google/models/gemini-2.5-pro", "gemini-2.5-pro"),
            (
                "gemini",
                "projects/p/locations/l/publishers/google/models/gemini-2.5-pro",
                "gemini-2.5-pro",
            ),
            ("openai", "openai/gpt-4o-2024-08-06", "gpt-4o-2024-08-06"),
            ("azure", "azure/gpt-4o-2024-11-20", "gpt-4o-2024-11-20"),
            ("anthropic", "anthropic/claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929"),
            ("anthropic", "claude-opus-4-5@20251101", "claude-opus-4-5-20251101"),
            ("anthropic", "claude-opus-4-5@default", "claude-opus-4-5"),
            (
                "anthropic",
                "us.anthropic.claude-haiku-4-5-20251001-v1:0",
                "claude-haiku-4-5-20251001",
            ),
            (
                "openai",
                "ft:gpt-4o-mini-2024-07-18:acme:support:AbC123",
                "ft:gpt-4o-mini-2024-07-18",
            ),
        ]:
            match = self.book.lookup(provider, model)
            assert match is not None, model
            self.assertEqual((match.pricing_key, match.match_kind), (key, "exact"))
        self.assertPrices("openai", "ft:gpt-4o-mini-2024-07-18:acme:support:AbC123", "0.3", "1.2")

    def test_provider_tables(self) -> None:
        """Azure prices are its own, else OpenAI's; Gemini only its own; other providers none."""
        self.assertPrices("azure", "gpt-4-turbo-2024-04-09", "11", "33")
        self.assertPrices("openai", "gpt-4-turbo-2024-04-09", "10", "30")
        self.assertPrices("azure", "gpt-3.5-turbo-instruct", "1.5", "2")
        self.assertIsNone(self.book.lookup("openai", "gemini-2.5-flash"))
        self.assertIsNone(self.book.lookup("gemini", "gpt-4o"))
        self.assertIsNone(self.book.lookup("bedrock", "gpt-4o"))

    def test_litellm_fields(self) -> None:
        """
        LiteLLM fields: _above_1hr is the 1-hour write, not a tier; _above_Nk_tokens
        are tiers; OpenAI's cache_creation price is the TTL-less write.
        """
        claude = self.book.lookup("anthropic", "claude-sonnet-4-5-20250929")
        assert claude is not None
        self.assertEqual(claude.price.cache_write_5m, per_million("3.75"))
        self.assertEqual(claude.price.cache_write_1h, per_million("6"))
        # Its only tier is the 1M-context one corrections.yaml adds: _above_1hr made none.
        self.assertEqual([tier.above_input_tokens for tier in claude.price.tiers], [200_000])
        gemini = self.book.lookup("gemini", "gemini-2.5-pro")
        assert gemini is not None
        self.assertEqual(
            gemini.price.tiers,
            (
                PriceTier(
                    200_000,
                    ModelPrice(
                        input=per_million("2.5"),
                        output=per_million("15"),
                        cached_input=per_million("0.25"),
                    ),
                ),
            ),
        )
        sol = self.book.lookup("openai", "gpt-5.6-sol")
        assert sol is not None
        self.assertEqual(
            (sol.price.cache_write, sol.price.cache_write_5m), (per_million("5"), None)
        )
        self.assertEqual(sol.price.tiers[0].price.cache_write, per_million("10"))

    def test_describe(self) -> None:
        """The description shows per-million prices, tiers and the source."""
        match = self.book.lookup("gemini", "models/gemini-2.5-pro")
        assert match is not None
        text = describe(match, "gemini")
        self.assertIn("gemini-2.5-pro on gemini (exact match)", text)
        self.assertIn(f"source: {BUNDLED_VERSION}", text)
        self.assertRegex(text, r"input\s+1\.25\n")
        self.assertRegex(text, r"output \(incl\. reasoning\)\s+10\n")
        self.assertIn("above 200,000", text)
        self.assertRegex(text, r"output \(incl\. reasoning\)\s+15\n  cache read\s+0\.25\n")
        self.assertIn('at service tier "priority" (as the answer reports it), instead:', text)
        self.assertRegex(text, r"instead:\n  input\s+2\.25\n")
        self.assertNotIn("retired model", text)


FLAT = ModelPrice(
    input=per_million("2"),
    output=per_million("8"),
    cached_input=per_million("0.2"),
    cache_write_5m=per_million("2.5"),
    cache_write_1h=per_million("4"),
    input_audio=per_million("40"),
    output_audio=per_million("80"),
)
TIERED = ModelPrice(
    input=per_million("1"),
    output=per_million("10"),
    cached_input=per_million("0.1"),
    tiers=(PriceTier(200_000, ModelPrice(input=per_million("2"), output=per_million("15"))),),
)


def book_of(price: ModelPrice, model: str = "m") -> PriceBook:
    """A book pricing one model the same on every provider."""
    return PriceBook({table: {model: price} for table in ("openai", "anthropic", "gemini")})


class CostTests(SynchronousTestCase):
    """The cost algorithm of USAGE-SPEC.md section 8, bucket by bucket."""

    def test_error_not_billed(self) -> None:
        """An error the provider does not bill costs exactly 0, even for an unpriced model."""
        cost = PriceBook({}).cost("openai", Usage(ERROR_NOT_BILLED, model="no-such-model"))
        self.assertEqual(costs(cost), (0, 0, 0))
        self.assertFalse(cost.priced)

    def test_unknown_input(self) -> None:
        """Unknown input tokens leave every cost and the tier unknown."""
        cost = book_of(FLAT).cost("openai", Usage("missing_not_requested", model="m"))
        self.assertEqual(costs(cost), (None, None, None))
        self.assertIsNone(cost.pricing_tier)
        self.assertEqual((cost.pricing_key, cost.priced), ("m", True))

    def test_partial_stream(self) -> None:
        """A cut stream with known input but unknown output gets only an input cost."""
        usage = Usage(PARTIAL_STREAM_TRUNCATED, model="m", input_tokens=1000)
        self.assertEqual(costs(book_of(FLAT).cost("openai", usage)), (Decimal("0.002"), None, None))

    def test_tier_threshold_is_strict(self) -> None:
        """Exactly at the threshold stays base; one token above reprices the whole request."""
        at = book_of(TIERED).cost(
            "openai", Usage(COMPLETE, model="m", input_tokens=200_000, output_tokens=0)
        )
        above = book_of(TIERED).cost(
            "openai", Usage(COMPLETE, model="m", input_tokens=200_001, output_tokens=0)
        )
        self.assertEqual((at.pricing_tier, at.input_cost), ("base", Decimal("0.2")))
        self.assertEqual((above.pricing_tier, above.input_cost), (">200k", Decimal("0.400002")))

    def test_tier_falls_back_to_base_per_bucket(self) -> None:
        """A bucket the tier does not price (here cache reads) keeps its base price."""
        usage = Usage(
            COMPLETE, model="m", input_tokens=300_000, cached_tokens=100_000, output_tokens=1000
        )
        cost = book_of(TIERED).cost("openai", usage)
        self.assertEqual(costs(cost), (Decimal("0.41"), Decimal("0.015"), Decimal("0.425")))

    def test_largest_tier_crossed(self) -> None:
        """With several tiers, the largest threshold crossed applies."""
        price = ModelPrice(
            input=per_million("1"),
            tiers=(
                PriceTier(128_000, ModelPrice(input=per_million("2"))),
                PriceTier(256_000, ModelPrice(input=per_million("3"))),
            ),
        )
        cost = book_of(price).cost(
            "openai", Usage(COMPLETE, model="m", input_tokens=300_000, output_tokens=0)
        )
        self.assertEqual((cost.pricing_tier, cost.input_cost), (">256k", Decimal("0.9")))

    def test_gemini_tier_basis_excludes_tool_use(self) -> None:
        """Gemini's tier is measured without tool-use prompt tokens, which still cost input."""
        usage = Usage(
            COMPLETE, model="m", input_tokens=200_100, tool_use_prompt_tokens=200, output_tokens=0
        )
        self.assertEqual(book_of(TIERED).cost("gemini", usage).pricing_tier, "base")
        self.assertEqual(book_of(TIERED).cost("openai", usage).pricing_tier, ">200k")
        self.assertEqual(book_of(TIERED).cost("gemini", usage).input_cost, Decimal("0.2001"))

    def test_anthropic_writes(self) -> None:
        """Anthropic writes cost the 5m/1h prices; writes without a TTL split cost the 5m price."""
        usage = Usage(
            COMPLETE,
            model="m",
            input_tokens=10_000,
            cached_tokens=2000,
            cache_creation_tokens=6000,
            cache_creation_5m_tokens=1000,
            cache_creation_1h_tokens=2000,
            output_tokens=0,
        )
        # 2000 uncached x 2 + 2000 reads x 0.2 + 1000 x 2.5 + 2000 x 4 + 3000 unsplit x 2.5
        expected = (
            Decimal("0.004")
            + Decimal("0.0004")
            + Decimal("0.0025")
            + Decimal("0.008")
            + Decimal("0.0075")
        )
        self.assertEqual(book_of(FLAT).cost("anthropic", usage).input_cost, expected)

    def test_openai_writes(self) -> None:
        """OpenAI writes cost the TTL-less write price, else the plain input price."""
        usage = Usage(
            COMPLETE, model="m", input_tokens=3000, cache_creation_tokens=1000, output_tokens=0
        )
        with_write = ModelPrice(input=per_million("2"), cache_write=per_million("2.5"))
        self.assertEqual(book_of(with_write).cost("openai", usage).input_cost, Decimal("0.0065"))
        self.assertEqual(book_of(FLAT).cost("openai", usage).input_cost, Decimal("0.006"))

    def test_audio(self) -> None:
        """Audio tokens leave the text buckets and cost audio prices (else the text ones)."""
        usage = Usage(
            COMPLETE,
            model="m",
            input_tokens=100,
            input_audio_tokens=40,
            output_tokens=50,
            output_audio_tokens=20,
        )
        cost = book_of(FLAT).cost("openai", usage)
        self.assertEqual(costs(cost)[:2], (Decimal("0.00172"), Decimal("0.00184")))
        plain = book_of(ModelPrice(input=per_million("2"), output=per_million("8")))
        self.assertEqual(
            costs(plain.cost("openai", usage))[:2], (Decimal("0.0002"), Decimal("0.0004"))
        )

    def test_missing_cache_read_price(self) -> None:
        """Cache reads without their price make input and total unknown, never input-priced."""
        price = ModelPrice(input=per_million("3"), output=per_million("15"))
        usage = Usage(COMPLETE, model="m", input_tokens=1000, cached_tokens=500, output_tokens=10)
        self.assertEqual(
            costs(book_of(price).cost("anthropic", usage)), (None, Decimal("0.00015"), None)
        )
        no_reads = Usage(COMPLETE, model="m", input_tokens=1000, cached_tokens=0, output_tokens=10)
        self.assertEqual(book_of(price).cost("anthropic", no_reads).input_cost, Decimal("0.003"))

    def test_inconsistent_counts(self) -> None:
        """Slices larger than the input they belong to give an unknown cost, not a negative one."""
        usage = Usage(COMPLETE, model="m", input_tokens=10, cached_tokens=20, output_tokens=0)
        self.assertIsNone(book_of(FLAT).cost("openai", usage).input_cost)


OVERRIDES_YAML = """\
claude-sonnet-4-20250514:
  input: 3.0
  output: 15.0
  cached_input: 0.3
  cache_write_5m: 3.75
  cache_write_1h: 6.0
  cache_write: 3.75        # TTL-less writes (OpenAI GPT-5.6+)
  input_audio: 40.0
  output_audio: 80.0
  tiers:                   # whole request repriced above a prompt-size threshold
    - above_input_tokens: 200000
      input: 6.0
      output: 22.5
      cached_input: 0.6
      cache_write_5m: 7.5
      cache_write_1h: 12.0
"""


class OverrideTests(SynchronousTestCase):
    """Operator price overrides, from a mapping or a YAML file."""

    def write(self, text: str) -> str:
        """A temporary file holding C{text}."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_file(self) -> None:
        """Every field of the documented file shape is read, per million, exactly."""
        overrides = load_overrides_file(self.write(OVERRIDES_YAML))
        price = overrides["claude-sonnet-4-20250514"]
        self.assertEqual(price.input, Decimal("0.000003"))
        self.assertEqual(price.cached_input, Decimal("0.0000003"))
        self.assertEqual(price.output_audio, Decimal("0.00008"))
        self.assertEqual(price.tiers[0].above_input_tokens, 200_000)
        self.assertEqual(price.tiers[0].price.cache_write_1h, Decimal("0.000012"))
        self.assertIsNone(price.tiers[0].price.input_audio)

    def test_new_model_priced(self) -> None:
        """A model the table lacks becomes priced, under any spelling of its id."""
        book = PriceBook.bundled().with_overrides(load_overrides_file(self.write(OVERRIDES_YAML)))
        match = book.lookup("anthropic", "anthropic/Claude-Sonnet-4-20250514")
        assert match is not None
        self.assertEqual((match.match_kind, match.source), ("override", "override"))
        self.assertIsNone(PriceBook.bundled().lookup("openai", "acme-model-1"))
        book = book.with_overrides({"acme-model-1": {"input": 1, "output": 2}})
        self.assertIsNotNone(book.lookup("openai", "ACME-model-1"))
        self.assertGreater(len(book), len(PriceBook.bundled()))

    def test_lookups_remembered_per_book(self) -> None:
        """
        A book answers a repeated lookup from memory, a book with new prices
        does not reuse the old book's answers, and what a book remembers is
        bounded (model names come from clients).
        """
        book = PriceBook.bundled()
        first = book.lookup("openai", "gpt-4o-2024-08-06")
        self.assertIs(book.lookup("openai", "gpt-4o-2024-08-06"), first)
        self.assertIsNone(book.lookup("openai", "acme-model-1"))
        repriced = book.with_overrides(
            {"gpt-4o-2024-08-06": {"input": 2}, "acme-model-1": {"input": 1, "output": 2}}
        )
        match = repriced.lookup("openai", "gpt-4o-2024-08-06")
        assert match is not None
        self.assertEqual(match.price.input, per_million("2"))
        self.assertIsNotNone(repriced.lookup("openai", "acme-model-1"))
        for n in range(pricing._LOOKUPS_KEPT + 10):
            book.lookup("openai", f"made-up-model-{n}")
        self.assertEqual(len(book._found), pricing._LOOKUPS_KEPT)
        self.assertIs(book.lookup("openai", "gpt-4o-2024-08-06"), first)

    def test_per_field_merge(self) -> None:
        """An override changes only the fields it gives; the table keeps the rest."""
        book = PriceBook.bundled().with_overrides({"gpt-4o-2024-08-06": {"input": 2}})
        match = book.lookup("openai", "gpt-4o-2024-08-06")
        assert match is not None
        self.assertEqual(match.price.input, per_million("2"))
        self.assertEqual(match.price.output, per_million("10"))
        self.assertEqual(match.price.cached_input, per_million("1.25"))
        self.assertEqual(match.sources, ("override", BUNDLED_VERSION))
        self.assertIn("source: override over", describe(match, "openai"))

    def test_tiers_merge_by_threshold(self) -> None:
        """An override tier merges field by field into the table's tier of the same threshold."""
        book = PriceBook.bundled().with_overrides(
            {"gemini-2.5-pro": {"tiers": [{"above_input_tokens": 200000, "output": 20}]}}
        )
        match = book.lookup("gemini", "gemini-2.5-pro")
        assert match is not None
        (tier,) = match.price.tiers
        self.assertEqual(
            (tier.price.input, tier.price.output), (per_million("2.5"), per_million("20"))
        )

    def test_overrides_replace_earlier_overrides(self) -> None:
        """with_overrides replaces the earlier overrides rather than stacking on them."""
        book = PriceBook.bundled().with_overrides({"gpt-4o": {"input": 1}}).with_overrides({})
        match = book.lookup("openai", "gpt-4o")
        assert match is not None
        self.assertEqual(match.price.input, per_million("2.5"))

    def assertBad(self, text: str, *words: str) -> None:
        """Reading C{text} as an overrides file fails with all of C{words} in the message."""
        path = self.write(text)
        error = self.assertRaises(PricingError, load_overrides_file, path)
        for word in (path, *words):
            self.assertIn(word, str(error))

    def test_bad_files(self) -> None:
        """Bad overrides fail with a message naming the file, model and field."""
        self.assertBad("gpt-4o:\n  inptu: 1\n", "gpt-4o", "inptu")
        self.assertBad("gpt-4o:\n  input: -1\n", "gpt-4o", "input")
        self.assertBad("gpt-4o:\n  output: cheap\n", "gpt-4o", "output")
        self.assertBad("gpt-4o:\n  output: true\n", "gpt-4o", "output")
        self.assertBad("gpt-4o:\n  input: .nan\n", "gpt-4o", "input")
        self.assertBad("- gpt-4o\n", "mapping")
        self.assertBad("gpt-4o: 2.5\n", "gpt-4o", "mapping")
        self.assertBad("gpt-4o: {}\n", "gpt-4o", "no price")
        self.assertBad("gpt-4o:\n  tiers:\n    - input: 1\n", "gpt-4o", "above_input_tokens")
        self.assertBad(
            "gpt-4o:\n  tiers:\n    - {above_input_tokens: 1, tiers: []}\n", "gpt-4o", "tiers"
        )
        self.assertBad("gpt-4o: {input: 1}\nopenai/GPT-4o: {input: 2}\n", "openai/GPT-4o")
        self.assertBad("gpt-4o: [\n", "cannot read")

    def test_missing_file(self) -> None:
        """A missing overrides file is a PricingError naming it."""
        path = self.mktemp()
        self.assertIn(path, str(self.assertRaises(PricingError, load_overrides_file, path)))

    def test_empty_file(self) -> None:
        """An empty overrides file overrides nothing."""
        self.assertEqual(load_overrides_file(self.write("")), {})
        self.assertEqual(parse_overrides(None), {})


LLM_PRICES = {
    "updated_at": "2026-08-05",
    "prices": [
        {
            "id": "gpt-4o",
            "vendor": "openai",
            "name": "GPT-4o",
            "input": 2,
            "output": 8,
            "input_cached": None,
        },
        {
            "id": "o3",
            "vendor": "openai",
            "name": "o3",
            "input": 2,
            "output": 8,
            "input_cached": 0.5,
        },
        {
            "id": "claude-3.7-sonnet",
            "vendor": "anthropic",
            "name": "Claude",
            "input": 3,
            "output": 15,
            "input_cached": None,
        },
        {
            "id": "gemini-2.5-flash",
            "vendor": "google",
            "name": "Flash",
            "input": 0.3,
            "output": 2.5,
            "input_cached": 0.03,
        },
        {
            "id": "grok-4",
            "vendor": "xai",
            "name": "Grok 4",
            "input": 3,
            "output": 15,
            "input_cached": None,
        },
    ],
}


class RemotePriceTests(SynchronousTestCase):
    """Fetched price data: both shapes, malformed data, and layering."""

    def test_llm_prices(self) -> None:
        """llm-prices current-v1 is read per million, by vendor, with its date as version."""
        remote = parse_remote_prices(json.dumps(LLM_PRICES).encode())
        self.assertEqual(remote.version, "llm-prices 2026-08-05")
        self.assertEqual(sorted(remote), ["anthropic", "gemini", "openai"])
        self.assertEqual(
            remote["openai"]["gpt-4o"], ModelPrice(input=per_million("2"), output=per_million("8"))
        )
        self.assertEqual(remote["gemini"]["gemini-2.5-flash"].cached_input, per_million("0.03"))

    def test_litellm_shape(self) -> None:
        """LiteLLM's shape is read per token, keeping only routed providers."""
        table = {
            "sample_spec": {"litellm_provider": "one of the providers"},
            "gpt-4o": {
                "litellm_provider": "openai",
                "input_cost_per_token": 2e-06,
                "output_cost_per_token": 8e-06,
            },
            "bedrock/x": {"litellm_provider": "bedrock", "input_cost_per_token": 1e-06},
        }
        remote = parse_remote_prices(json.dumps(table).encode())
        self.assertIsNone(remote.version)
        self.assertEqual(
            remote,
            {
                "openai": {
                    "gpt-4o": ModelPrice(input=Decimal("0.000002"), output=Decimal("0.000008"))
                }
            },
        )

    def test_malformed(self) -> None:
        """Anything that is not one of the two shapes is a PricingError."""
        for data in [
            b"<html>",
            b"\xff\xfe",
            b"[]",
            b"{}",
            b'{"prices": {}}',
            b'{"prices": [{"vendor": "openai", "input": 1, "output": 2}]}',
            b'{"prices": [{"id": "gpt-4o", "vendor": "openai", "input": "1", "output": 2}]}',
            b'{"prices": [{"id": "gpt-4o", "vendor": "openai", "input": -1, "output": 2}]}',
            b'{"gpt-4o": {"litellm_provider": "openai", "input_cost_per_token": "free"}}',
        ]:
            self.assertRaises(PricingError, parse_remote_prices, data)

    def test_layering(self) -> None:
        """Remote prices win per field over bundled ones (exact ids only); overrides beat both."""
        remote = parse_remote_prices(json.dumps(LLM_PRICES).encode())
        book = PriceBook.bundled().with_remote(remote, "llm-prices 2026-08-05")
        gpt_4o = book.lookup("openai", "gpt-4o")
        assert gpt_4o is not None
        self.assertEqual(gpt_4o.price.input, per_million("2"))
        self.assertEqual(gpt_4o.price.cached_input, per_million("1.25"))
        self.assertEqual(gpt_4o.source, "llm-prices 2026-08-05")
        dated = book.lookup("openai", "gpt-4o-2024-08-06")
        assert dated is not None
        self.assertEqual((dated.price.input, dated.source), (per_million("2.5"), BUNDLED_VERSION))
        # llm-prices' editorial slug "claude-3.7-sonnet" is not an API id: no
        # fuzzy match.  The price is corrections.yaml's, not a retired one.
        sonnet = book.lookup("anthropic", "claude-3-7-sonnet-20250219")
        assert sonnet is not None
        self.assertEqual((sonnet.sources, sonnet.retired), ((BUNDLED_VERSION,), None))
        overridden = book.with_overrides({"gpt-4o": {"output": 9}}).lookup("openai", "gpt-4o")
        assert overridden is not None
        self.assertEqual(
            (overridden.price.input, overridden.price.output), (per_million("2"), per_million("9"))
        )
        self.assertEqual(overridden.sources, ("override", "llm-prices 2026-08-05", BUNDLED_VERSION))


class CorrectionsTests(SynchronousTestCase):
    """The project's corrections to the bundled table (majordomo/data/corrections.yaml)."""

    def test_guide_model_priced(self) -> None:
        """
        claude-sonnet-4-20250514, the guide's Anthropic model, is priced with its
        cache writes, reads and 1M-context tier, though LiteLLM dropped it; the
        price is the project's correction, not labelled a retired model's.
        """
        match = PriceBook.bundled().lookup("anthropic", "claude-sonnet-4-20250514")
        assert match is not None
        self.assertEqual((match.source, match.retired), (BUNDLED_VERSION, None))
        price = match.price
        self.assertEqual(
            (price.input, price.output, price.cached_input, price.cache_write_5m),
            (per_million("3"), per_million("15"), per_million("0.3"), per_million("3.75")),
        )
        self.assertEqual(price.cache_write_1h, per_million("6"))
        (tier,) = price.tiers
        self.assertEqual((tier.above_input_tokens, tier.price.input), (200000, per_million("6")))

    def test_corrections_follow_cache_multipliers(self) -> None:
        """Corrected Claude prices (Haiku 3 aside) write at 1.25x/2x and read at 0.1x input."""
        book = PriceBook.bundled()
        for model in (
            "claude-sonnet-4-20250514",
            "claude-opus-4-20250514",
            "claude-opus-4-1-20250805",
            "claude-3-7-sonnet-20250219",
            "claude-3-5-haiku-20241022",
        ):
            match = book.lookup("anthropic", model)
            assert match is not None, model
            price = match.price
            assert price.input is not None
            self.assertEqual(price.cache_write_5m, price.input * Decimal("1.25"), model)
            self.assertEqual(price.cache_write_1h, price.input * 2, model)
            self.assertEqual(price.cached_input, price.input * Decimal("0.1"), model)
