"""
Service tiers, long-context tiers and retired models in the price book: the
tier an answer reports decides its price (USAGE-SPEC.md section 5), a tier
without a price gives cost NULL and one warning, and a retired model is priced
at, and shown as, its last known price.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

from twisted.internet import defer
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import provider

from majordomo import pricing
from majordomo.cli.pricing import describe
from majordomo.pricing import PriceBook
from majordomo.pricing import cost as pricing_cost
from majordomo.pricing.cost import Cost
from majordomo.pricing.litellm import load_bundled, parse_litellm
from majordomo.pricing.overrides import parse_overrides
from majordomo.pricing.prices import ModelPrice, PricingError, service_tier_name
from majordomo.usage import COMPLETE, Usage
from tests.test_cli import majordomo
from tests.vectors import TOKEN_FIELDS, load_vector, own_vector_files, vector_parser


def per_million(value: str) -> Decimal:
    """A USD-per-million price as the per-token Decimal the book holds."""
    return Decimal(value) / 1_000_000


# A LiteLLM entry in the shape of gpt-5.4's: per-tier fields, with long-context
# ones for flex but not for priority.
LITELLM = {
    "acme-5": {
        "litellm_provider": "openai",
        "input_cost_per_token": 2.5e-06,
        "output_cost_per_token": 1.5e-05,
        "cache_read_input_token_cost": 2.5e-07,
        "input_cost_per_token_above_272k_tokens": 5e-06,
        "output_cost_per_token_above_272k_tokens": 2.25e-05,
        "cache_read_input_token_cost_above_272k_tokens": 5e-07,
        "input_cost_per_token_flex": 1.25e-06,
        "output_cost_per_token_flex": 7.5e-06,
        "cache_read_input_token_cost_flex": 1.25e-07,
        "input_cost_per_token_above_272k_tokens_flex": 2.5e-06,
        "output_cost_per_token_above_272k_tokens_flex": 1.125e-05,
        "cache_read_input_token_cost_above_272k_tokens_flex": 2.5e-07,
        "input_cost_per_token_priority": 5e-06,
        "output_cost_per_token_priority": 3e-05,
        "cache_read_input_token_cost_priority": 5e-07,
        "input_cost_per_token_batches": 1.25e-06,
        "output_cost_per_token_batches": 7.5e-06,
        # A suffix whose meaning is not known: no tier is made of it.
        "input_cost_per_token_decisions": 1e-07,
    },
    "claude-acme": {
        "litellm_provider": "anthropic",
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
        "cache_creation_input_token_cost": 3.75e-06,
        "cache_creation_input_token_cost_above_1hr": 6e-06,
        "cache_creation_input_token_cost_batches": 1.875e-06,
        "cache_creation_input_token_cost_above_1hr_above_200k_tokens_batches": 6e-06,
    },
}


def book() -> PriceBook:
    """A book of the entries above only."""
    return PriceBook(parse_litellm(LITELLM), "test")


def usage(tier: str | None, prompt: int, cached: int = 0, output: int = 1000) -> Usage:
    """A complete OpenAI usage of acme-5 at service tier C{tier}."""
    return Usage(
        COMPLETE,
        model="acme-5",
        service_tier=tier,
        input_tokens=prompt,
        cached_tokens=cached,
        output_tokens=output,
    )


def total(cost: Cost) -> Decimal | None:
    return cost.total_cost


class LiteLLMServiceTierTests(SynchronousTestCase):
    """LiteLLM's per-tier fields read into ModelPrice.service_tiers."""

    def test_fields(self) -> None:
        """
        _flex, _priority and _batches fields make tiers named as answers report
        them (flex, priority, batch), with their own _above_Nk_tokens tiers;
        an unknown suffix makes none.
        """
        price = parse_litellm(LITELLM)["openai"]["acme-5"]
        self.assertEqual([name for name, _ in price.service_tiers], ["batch", "flex", "priority"])
        flex = price.service_tier("flex")
        assert flex is not None
        self.assertEqual(
            (flex.input, flex.output, flex.cached_input),
            (per_million("1.25"), per_million("7.5"), per_million("0.125")),
        )
        (long_flex,) = flex.tiers
        self.assertEqual(
            (long_flex.above_input_tokens, long_flex.price.input, long_flex.price.output),
            (272_000, per_million("2.5"), per_million("11.25")),
        )
        priority = price.service_tier("priority")
        assert priority is not None
        self.assertEqual(priority.tiers, ())
        self.assertIsNone(price.service_tier("decisions"))
        # The base prices are not touched by the tier fields.
        self.assertEqual(price.input, per_million("2.5"))
        self.assertEqual([tier.above_input_tokens for tier in price.tiers], [272_000])

    def test_anthropic_batch_writes(self) -> None:
        """Anthropic's cache-write fields keep their TTL meaning inside a service tier."""
        price = parse_litellm(LITELLM)["anthropic"]["claude-acme"]
        batch = price.service_tier("batch")
        assert batch is not None
        self.assertEqual(batch.cache_write_5m, per_million("1.875"))
        (tier,) = batch.tiers
        self.assertEqual(
            (tier.above_input_tokens, tier.price.cache_write_1h), (200_000, per_million("6"))
        )

    def test_bundled_table(self) -> None:
        """The shipped table prices gpt-5's flex and priority tiers from LiteLLM's fields."""
        match = PriceBook.bundled().lookup("openai", "gpt-5-2025-08-07")
        assert match is not None
        flex, priority = match.price.service_tier("flex"), match.price.service_tier("priority")
        assert flex is not None and priority is not None
        self.assertEqual((flex.input, flex.output), (per_million("0.625"), per_million("5")))
        self.assertEqual((priority.input, priority.output), (per_million("2.5"), per_million("20")))


class TierNameTests(SynchronousTestCase):
    """Which reported names are the standard tier, and which name others."""

    def test_standard(self) -> None:
        """
        default, standard, auto (an echo), Gemini's unspecified, Vertex's
        ON_DEMAND and nothing at all are the standard tier.
        """
        for reported in (
            None,
            "",
            "default",
            "standard",
            "auto",
            "unspecified",
            "ON_DEMAND",
            "TRAFFIC_TYPE_UNSPECIFIED",
            " Default ",
        ):
            self.assertIsNone(service_tier_name(reported), reported)

    def test_names(self) -> None:
        """Reported names are lower-cased; fast and Vertex's trafficType name priced tiers."""
        self.assertEqual(service_tier_name("flex"), "flex")
        self.assertEqual(service_tier_name("Priority"), "priority")
        self.assertEqual(service_tier_name("fast"), "priority")
        self.assertEqual(service_tier_name("ON_DEMAND_PRIORITY"), "priority")
        self.assertEqual(service_tier_name("ON_DEMAND_FLEX"), "flex")
        self.assertEqual(service_tier_name("scale"), "scale")
        # Not priced per token by any table: such answers get no cost.
        self.assertEqual(service_tier_name("PROVISIONED_THROUGHPUT"), "provisioned_throughput")


class CostAtServiceTierTests(SynchronousTestCase):
    """PriceBook.cost at the tier the answer reports."""

    def setUp(self) -> None:
        self.warnings: list[dict[str, Any]] = []

        @provider(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == pricing_cost.log.namespace:
                self.warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_standard_names_cost_base(self) -> None:
        """A standard tier (reported or not) costs the base price: 1000 x $2.5/M + 1000 x $15/M."""
        for tier in (None, "default", "auto"):
            cost = book().cost("openai", usage(tier, 1000))
            self.assertEqual(total(cost), Decimal("0.0175"), tier)
            self.assertIsNone(cost.unpriced_service_tier)

    def test_flex(self) -> None:
        """Flex: 1000 x $1.25/M + 1000 x $0.125/M cached + 1000 x $7.5/M."""
        cost = book().cost("openai", usage("flex", 2000, cached=1000))
        self.assertEqual(
            (cost.input_cost, cost.output_cost, cost.total_cost),
            (Decimal("0.001375"), Decimal("0.0075"), Decimal("0.008875")),
        )
        self.assertEqual(cost.pricing_tier, "base")

    def test_flex_long_context(self) -> None:
        """Flex above 272k: the flex tier's long-context prices on every bucket."""
        cost = book().cost("openai", usage("flex", 300_000, cached=100_000))
        # 200000 x $2.5/M + 100000 x $0.25/M; 1000 x $11.25/M
        self.assertEqual(
            (cost.input_cost, cost.output_cost), (Decimal("0.525"), Decimal("0.01125"))
        )
        self.assertEqual(cost.pricing_tier, ">272k")

    def test_unpriced_tier(self) -> None:
        """
        A tier the model has no price for: every cost NULL, the tier named,
        the model still priced (its row has a pricing key), one warning for
        many requests.
        """
        shared = book()
        for _ in range(5):
            cost = shared.cost("openai", usage("scale", 1000))
            # A book derived from it (a price refresh, new overrides) shares the warnings.
            shared.with_overrides({}).cost("openai", usage("scale", 1000))
        self.assertEqual((cost.input_cost, cost.output_cost, cost.total_cost), (None, None, None))
        self.assertEqual((cost.unpriced_service_tier, cost.pricing_key), ("scale", "acme-5"))
        self.assertTrue(cost.priced)
        (warning,) = [e for e in self.warnings if e.get("tier") == "scale"]
        self.assertIn("is recorded as NULL", warning["log_format"])
        self.assertEqual(warning["model"], "acme-5")

    def test_priority_long_context_unpriced(self) -> None:
        """Priority above 272k, which the table does not price: NULL, never a guess."""
        cost = book().cost("openai", usage("priority", 280_000))
        self.assertEqual((cost.input_cost, cost.output_cost), (None, None))
        self.assertEqual(cost.unpriced_service_tier, "priority")
        below = book().cost("openai", usage("priority", 272_000))
        # Exactly at the threshold stays below it: 272000 x $5/M + 1000 x $30/M.
        self.assertEqual(total(below), Decimal("1.39"))

    def test_bucket_gap(self) -> None:
        """
        A tier that leaves unpriced a bucket the standard tier prices (here
        cache reads) prices requests without that bucket, and gives the side
        that has it no cost.
        """
        prices = {"acme-5": {"service_tiers": {"balanced": {"input": 2, "output": 12}}}}
        priced = book().with_overrides(prices)
        uncached = priced.cost("openai", usage("balanced", 1000))
        self.assertEqual(total(uncached), Decimal("0.014"))  # 1000 x $2/M + 1000 x $12/M
        cached = priced.cost("openai", usage("balanced", 1000, cached=500))
        self.assertEqual((cached.input_cost, cached.output_cost), (None, Decimal("0.012")))
        self.assertEqual(cached.unpriced_service_tier, "balanced")

    def test_warnings_bounded(self) -> None:
        """Unpriced tiers are warned about for the first MAX_UNPRICED_SERVICE_TIERS only."""
        self.patch(pricing_cost, "MAX_UNPRICED_SERVICE_TIERS", 3)
        shared = book()
        for n in range(10):
            shared.cost("openai", usage(f"tier-{n}", 1000))
        tiers = [e["tier"] for e in self.warnings if "tier" in e]
        self.assertEqual(tiers, ["tier-0", "tier-1", "tier-2"])
        self.assertIn("not warning about more", self.warnings[-1]["log_format"])
        self.assertEqual(len(shared.unpriced_tiers.seen), 3)

    def test_error_not_billed(self) -> None:
        """An error answer costs 0 at any tier, priced or not."""
        cost = book().cost(
            "openai", Usage("error_not_billed", model="acme-5", service_tier="scale")
        )
        self.assertEqual(total(cost), Decimal(0))


class OverrideServiceTierTests(SynchronousTestCase):
    """service_tiers: in the overrides file (and corrections.yaml)."""

    def test_parsed_and_layered(self) -> None:
        """An override's tier prices win per field over the table's tier of the same name."""
        overrides = parse_overrides(
            {
                "acme-5": {
                    "service_tiers": {
                        "Flex": {"input": 1},
                        "scale": {
                            "input": 2,
                            "output": 9,
                            "cached_input": 0.2,
                            "tiers": [{"above_input_tokens": 272000, "input": 4}],
                        },
                    }
                }
            }
        )
        layered = book().with_overrides(overrides)
        match = layered.lookup("openai", "acme-5")
        assert match is not None
        flex = match.price.service_tier("flex")
        assert flex is not None
        self.assertEqual((flex.input, flex.output), (per_million("1"), per_million("7.5")))
        self.assertEqual(match.price.input, per_million("2.5"))
        # 1000 x $2/M + 1000 x $9/M
        self.assertEqual(total(layered.cost("openai", usage("scale", 1000))), Decimal("0.011"))
        # Above 272k, scale's own tier: 300000 x $4/M; output has no long-context
        # price at scale while the standard tier has one: unknown.
        long = layered.cost("openai", usage("scale", 300_000))
        self.assertEqual((long.input_cost, long.output_cost), (Decimal("1.2"), None))

    def test_errors(self) -> None:
        """Mistakes in service_tiers are PricingErrors naming the model and tier."""
        for spec, message in [
            ({"service_tiers": [1]}, "expected a mapping of service tier"),
            ({"service_tiers": {"default": {"input": 1}}}, "is not a service tier name"),
            ({"service_tiers": {"flex": {"inptu": 1}}}, "unknown field 'inptu'"),
            ({"service_tiers": {"flex": {}}}, "flex: no price given"),
            ({"service_tiers": {"flex": {"input": -1}}}, "non-negative"),
            ({"service_tiers": {"flex": {"service_tiers": {}}}}, "unknown field 'service_tiers'"),
            ({"service_tiers": {"flex": {"input": 1}, "FLEX": {"input": 2}}}, "given twice"),
        ]:
            with self.assertRaises(PricingError) as raised:
                parse_overrides({"acme-5": spec})
            self.assertIn("acme-5", str(raised.exception))
            self.assertIn(message, str(raised.exception))

    def test_tier_only_override(self) -> None:
        """An override may give only service-tier prices; the model's own come from below."""
        (price,) = parse_overrides({"gpt-4o": {"service_tiers": {"scale": {"input": 1}}}}).values()
        self.assertIsNone(price.input)
        self.assertEqual([name for name, _ in price.service_tiers], ["scale"])


class LongContextCorrectionsTests(SynchronousTestCase):
    """Long-context tiers the shipped data adds where LiteLLM's table lacks them."""

    def test_sonnet_45(self) -> None:
        """
        Sonnet 4.5 (dated and alias) above 200k input tokens: 6 / 22.50 / 7.50 /
        12 / 0.60 per million on every bucket (USAGE-SPEC.md section 5).
        """
        bundled = PriceBook.bundled()
        for model in ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"):
            match = bundled.lookup("anthropic", model)
            assert match is not None
            (tier,) = match.price.tiers
            self.assertEqual(tier.above_input_tokens, 200_000)
            got = (
                tier.price.input,
                tier.price.output,
                tier.price.cache_write_5m,
                tier.price.cache_write_1h,
                tier.price.cached_input,
            )
            want = tuple(per_million(v) for v in ("6", "22.5", "7.5", "12", "0.6"))
            self.assertEqual(got, want, model)

    def test_every_published_long_context_family(self) -> None:
        """
        Every model family USAGE-SPEC.md section 5 gives a long-context rate has
        one in the shipped data, at its threshold.
        """
        bundled = PriceBook.bundled()
        for provider_name, model, threshold in [
            ("anthropic", "claude-sonnet-4-20250514", 200_000),
            ("anthropic", "claude-sonnet-4-5-20250929", 200_000),
            ("gemini", "gemini-2.5-pro", 200_000),
            ("gemini", "gemini-3-pro-preview", 200_000),
            ("gemini", "gemini-3.1-pro-preview", 200_000),
            ("gemini", "gemini-1.5-pro", 128_000),
            ("gemini", "gemini-1.5-flash", 128_000),
            ("openai", "gpt-5.4", 272_000),
            ("openai", "gpt-5.4-pro", 272_000),
            ("openai", "gpt-5.5", 272_000),
            ("openai", "gpt-5.5-pro", 272_000),
            ("openai", "gpt-5.6-sol", 272_000),
            ("openai", "gpt-5.6-terra", 272_000),
            ("openai", "gpt-5.6-luna", 272_000),
        ]:
            match = bundled.lookup(provider_name, model)
            assert match is not None, model
            thresholds = [tier.above_input_tokens for tier in match.price.tiers]
            self.assertEqual(thresholds, [threshold], model)
        for model in ("gpt-5.4-mini", "gpt-5.4-nano", "claude-sonnet-4-6", "claude-opus-4-6"):
            match = bundled.lookup("anthropic" if "claude" in model else "openai", model)
            assert match is not None, model
            self.assertEqual(match.price.tiers, (), model)


class RetiredLayerTests(SynchronousTestCase):
    """The retired models' last known prices lie below the bundled table."""

    def test_below_the_table(self) -> None:
        """A current entry wins whole; a model only below is taken, and said to be."""
        below = {
            "openai": {
                "gpt-4o": ModelPrice(input=per_million("99"), output=per_million("99")),
                "acme-retired-1": ModelPrice(input=per_million("1"), output=per_million("2")),
            }
        }
        bundled = load_bundled(below)
        self.assertEqual(bundled.tables["openai"]["gpt-4o"].input, per_million("2.5"))
        self.assertEqual(bundled.tables["openai"]["acme-retired-1"].output, per_million("2"))
        self.assertEqual(bundled.from_below, frozenset({("openai", "acme-retired-1")}))

    def test_retired_match(self) -> None:
        """
        The models the live table dropped are priced, and their match says it
        is a retired model's last known price, with its provenance.
        """
        bundled = PriceBook.bundled()
        for provider_name, model in [
            ("gemini", "gemini-2.0-flash"),
            ("anthropic", "claude-3-opus-20240229"),
            ("openai", "o1-mini-2024-09-12"),
            ("openai", "gpt-4.5-preview-2025-02-27"),
        ]:
            match = bundled.lookup(provider_name, model)
            assert match is not None, model
            self.assertEqual(match.source, pricing.RETIRED_SOURCE, model)
            assert match.retired is not None
            self.assertTrue(match.retired.startswith("last published price: "), match.retired)
            text = describe(match, provider_name)
            self.assertIn("retired model: the current LiteLLM table no longer lists it", text)
            self.assertIn(match.retired, text)
        current = bundled.lookup("openai", "gpt-4o")
        assert current is not None
        self.assertIsNone(current.retired)
        # An operator override still wins over a retired price.
        overridden = bundled.with_overrides({"gemini-2.0-flash": {"input": 7}})
        match = overridden.lookup("gemini", "gemini-2.0-flash")
        assert match is not None
        self.assertEqual(match.sources, ("override", pricing.RETIRED_SOURCE))
        self.assertEqual(match.price.input, per_million("7"))
        refreshed = bundled.with_remote({"gemini": {}}, "remote-1").lookup(
            "gemini", "gemini-2.0-flash"
        )
        assert refreshed is not None
        self.assertEqual(refreshed.source, pricing.RETIRED_SOURCE)
        self.assertIsNotNone(refreshed.retired)


class ShowTests(TestCase):
    """C{majordomo pricing show} on retired models and service tiers."""

    def test_retired_model(self) -> defer.Deferred[None]:
        """pricing show says a retired model's price is its last known one, and where from."""

        async def go() -> None:
            out, err, code = await majordomo("pricing", "show", "claude-3-opus-20240229")
            self.assertEqual((err, code), ("", 0))
            self.assertIn("source: litellm-retired", out)
            self.assertIn("retired model: the current LiteLLM table no longer lists it", out)
            self.assertIn("last published price: ", out)

        return defer.ensureDeferred(go())

    def test_service_tiers(self) -> defer.Deferred[None]:
        """pricing show lists a model's service-tier prices and what has none."""

        async def go() -> None:
            out, err, code = await majordomo("pricing", "show", "gpt-5.4")
            self.assertEqual((err, code), ("", 0))
            self.assertIn('at service tier "flex" (as the answer reports it), instead:', out)
            self.assertIn(
                "above 272,000 prompt tokens (cached and cache-write tokens included): "
                "no price at this tier",
                out,
            )

        return defer.ensureDeferred(go())


class OwnVectorUsageTests(SynchronousTestCase):
    """Our own vectors' bodies parse to exactly their expected usage and service tier."""

    def test_usage(self) -> None:
        """Whole and byte by byte, each of tests/vectors gives its expected usage."""
        own = own_vector_files()
        self.assertGreaterEqual(len([p for p in own if "/10" in p]), 9)
        for path in own:
            vector = load_vector(path)
            body = vector["response_body"].encode("utf-8")
            for chunks in ([body], [body[i : i + 1] for i in range(len(body))]):
                parser = vector_parser(vector)
                for chunk in chunks:
                    parser.feed(chunk)
                usage = parser.finish(complete=True)
                expected = vector["expected"]
                name = os.path.basename(path)
                for key in (*TOKEN_FIELDS, "usage_status", "model", "service_tier"):
                    if key in expected:
                        self.assertEqual(getattr(usage, key), expected[key], f"{name} {key}")
