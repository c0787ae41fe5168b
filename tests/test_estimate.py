"""
L{majordomo.policy.estimate}: the most a request can cost, from the bundled
price table, for every provider; and, for every usage vector, that the exact
cost the gateway prices its answer at never exceeds the estimate made from
its request.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from decimal import Decimal
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from majordomo import providers
from majordomo.policy import estimate
from majordomo.policy.estimate import (
    FALLBACK_OUTPUT_TOKENS,
    MAX_ANSWERS,
    PROVIDER_ADDED_TOKENS,
    Estimate,
    estimate_cost,
)
from majordomo.pricing import PriceBook
from majordomo.pricing.litellm import parse_litellm
from majordomo.pricing.prices import MAX_SANE_OUTPUT_TOKENS, ModelPrice, PriceTier, price_fields
from majordomo.providers import request_fields
from tests.test_pricing import vector_usage
from tests.vectors import load_vector, vector_files

BOOK = PriceBook.bundled()
SIZE = 1000  # the body size most cases use, in bytes
_ABSENT = object()  # a member left out


def per_million(value: str) -> Decimal:
    return Decimal(value).scaleb(-6)


def estimated(provider: str, model: str, fields: dict[str, Any] | None) -> Estimate | None:
    """The estimate for a body of SIZE bytes with C{fields}, at the bundled price."""
    match = BOOK.lookup(provider, model)
    assert match is not None, model
    return estimate_cost(provider, model, SIZE, fields, match.price)


class EstimateCase(SynchronousTestCase):
    """assertEstimate: the exact tokens and cost an estimate must have."""

    def assertEstimate(
        self,
        found: Estimate | None,
        output_tokens: int,
        input_price: str,
        output_price: str,
        size: int = SIZE,
    ) -> None:
        """
        C{found} bounds input by C{size} plus the allowance and output by
        C{output_tokens}, at the highest prices C{input_price} and
        C{output_price} (USD per million), exactly.
        """
        input_tokens = size + PROVIDER_ADDED_TOKENS
        cost = input_tokens * per_million(input_price) + output_tokens * per_million(output_price)
        self.assertEqual(found, Estimate(input_tokens, output_tokens, cost))


class OpenAITests(EstimateCase):
    """
    gpt-4o's highest prices are its priority tier's (4.25 in, 17 out per
    million, above the standard 2.5 / 10); it answers with at most 16,384.
    """

    def test_chat_caps(self) -> None:
        """max_completion_tokens or max_tokens caps the answer (the larger if both)."""
        for fields, cap in (
            ({"max_completion_tokens": 1000}, 1000),
            ({"max_tokens": 700}, 700),
            ({"max_completion_tokens": 300, "max_tokens": 900}, 900),
            ({"max_completion_tokens": 900, "max_tokens": None}, 900),
        ):
            self.assertEstimate(estimated("openai", "gpt-4o", fields), cap, "4.25", "17")

    def test_responses_cap(self) -> None:
        """Responses' max_output_tokens caps the answer, reasoning included."""
        found = estimated("openai", "gpt-5.4", {"model": "gpt-5.4", "max_output_tokens": 5000})
        # gpt-5.4: 5 in (above 272k, and priority), 30 out (priority).
        self.assertEstimate(found, 5000, "5", "30")

    def test_no_cap(self) -> None:
        """Without a cap, the model's largest answer from the price table."""
        self.assertEstimate(estimated("openai", "gpt-4o", {}), 16384, "4.25", "17")
        self.assertEstimate(estimated("openai", "gpt-4o", None), 16384, "4.25", "17")

    def test_several_answers(self) -> None:
        """n answers (best_of for legacy completions: the more of the two) each up to the cap."""
        for fields, answers in (
            ({"n": 3}, 3),
            ({"n": 1}, 1),
            ({"n": 2, "best_of": 5}, 5),
            ({"n": 0}, 1),
            ({"n": -4}, 1),
        ):
            fields = {"max_tokens": 100, **fields}
            self.assertEstimate(estimated("openai", "gpt-4o", fields), 100 * answers, "4.25", "17")

    def test_unreadable_counts_at_worst(self) -> None:
        """A count that is not a sane int is taken at MAX_ANSWERS, never as 1."""
        for count in ("3", 3.0, True, 10**6, [2]):
            found = estimated("openai", "gpt-4o", {"max_tokens": 10, "n": count})
            self.assertEstimate(found, 10 * MAX_ANSWERS, "4.25", "17")

    def test_unreadable_caps_give_the_model_limit(self) -> None:
        """
        A cap that is not a sane token count (a string, a float, a bool, 0,
        negative, absurd) makes the request's caps unsure: the model's limit.
        """
        for cap in ("100", 100.0, True, False, 0, -5, MAX_SANE_OUTPUT_TOKENS + 1, {"n": 1}):
            found = estimated("openai", "gpt-4o", {"max_tokens": cap})
            self.assertEstimate(found, 16384, "4.25", "17")
            found = estimated("openai", "gpt-4o", {"max_completion_tokens": 10, "max_tokens": cap})
            self.assertEstimate(found, 16384, "4.25", "17")
        found = estimated("openai", "gpt-4o", {"max_tokens": MAX_SANE_OUTPUT_TOKENS})
        self.assertEstimate(found, MAX_SANE_OUTPUT_TOKENS, "4.25", "17")

    def test_azure(self) -> None:
        """Azure reads OpenAI's members; its gpt-4o prices are its own (2.5 / 10, batch lower)."""
        found = estimated("azure", "gpt-4o", {"max_completion_tokens": 64, "n": 2})
        self.assertEstimate(found, 128, "2.5", "10")

    def test_audio_prices(self) -> None:
        """Audio tokens are priced above text ones: the bound takes the audio prices."""
        found = estimated("openai", "gpt-4o-audio-preview", {"max_tokens": 50})
        self.assertEstimate(found, 50, "40", "80")

    def test_model_without_limit(self) -> None:
        """A model the table gives no largest answer for falls back to FALLBACK_OUTPUT_TOKENS."""
        match = BOOK.lookup("openai", "gpt-5.5-cyber")
        assert match is not None
        self.assertIsNone(match.price.max_output_tokens)
        self.assertEstimate(
            estimated("openai", "gpt-5.5-cyber", {}), FALLBACK_OUTPUT_TOKENS, "12.5", "75"
        )
        found = estimated("openai", "gpt-5.5-cyber", {"max_output_tokens": 10})
        self.assertEstimate(found, 10, "12.5", "75")


class AnthropicTests(EstimateCase):
    """
    claude-sonnet-4-5's highest input price is a 1-hour cache write above
    200k tokens (12 per million, the base input is 3); output 22.5 there.
    """

    def test_cap(self) -> None:
        found = estimated("anthropic", "claude-sonnet-4-5-20250929", {"max_tokens": 1024})
        self.assertEstimate(found, 1024, "12", "22.5")

    def test_no_cap(self) -> None:
        self.assertEstimate(estimated("anthropic", "claude-sonnet-4-5", {}), 64000, "12", "22.5")

    def test_openai_members_ignored(self) -> None:
        """Anthropic has neither n nor max_completion_tokens: they change nothing."""
        fields = {"max_tokens": 10, "n": 5, "max_completion_tokens": 10**4}
        self.assertEstimate(estimated("anthropic", "claude-haiku-4-5", fields), 10, "2", "5")


class GeminiTests(EstimateCase):
    """
    gemini-2.5-pro's highest prices are priority above 200k tokens (4.5 in,
    27 out per million; the base is 1.25 / 10); it answers with at most 65,536.
    """

    def test_cap_and_candidates(self) -> None:
        for config, output in (
            ({"maxOutputTokens": 2048}, 2048),
            ({"maxOutputTokens": 2048, "candidateCount": 3}, 6144),
            ({"max_output_tokens": 100, "candidate_count": 2}, 200),
            ({"candidateCount": 2}, 2 * 65536),
            ({"maxOutputTokens": "2048"}, 65536),
        ):
            for name in ("generationConfig", "generation_config"):
                found = estimated("gemini", "gemini-2.5-pro", {name: config})
                self.assertEstimate(found, output, "4.5", "27")

    def test_no_cap(self) -> None:
        for fields in ({}, {"generationConfig": None}, {"generationConfig": [1]}):
            self.assertEstimate(estimated("gemini", "gemini-2.5-pro", fields), 65536, "4.5", "27")

    def test_both_spellings(self) -> None:
        """Both spellings given: the larger cap and count count."""
        fields = {
            "generationConfig": {"maxOutputTokens": 10, "candidateCount": 4},
            "generation_config": {"maxOutputTokens": 30},
        }
        self.assertEstimate(estimated("gemini", "gemini-2.5-pro", fields), 120, "4.5", "27")

    def test_top_level_caps_ignored(self) -> None:
        """Gemini reads its caps inside generationConfig only."""
        found = estimated("gemini", "gemini-2.5-flash", {"max_tokens": 5, "n": 3})
        self.assertEstimate(found, 65536, "1.8", "4.5")


class BoundTests(EstimateCase):
    """What the estimate is bounded by, and when there is none."""

    def test_unpriced(self) -> None:
        """No model, no price, or a side without any price: None (model_not_priced)."""
        price = ModelPrice(input=per_million("1"), output=per_million("2"))
        self.assertIsNone(estimate_cost("openai", None, SIZE, {}, price))
        self.assertIsNone(estimate_cost("openai", "nobody-1", SIZE, {}, None))
        self.assertIsNone(BOOK.lookup("openai", "nobody-1"))
        only_input = ModelPrice(input=per_million("1"))
        self.assertIsNone(estimate_cost("openai", "m", SIZE, {}, only_input))
        only_output = ModelPrice(output=per_million("1"))
        self.assertIsNone(estimate_cost("openai", "m", SIZE, {}, only_output))
        # An image model whose output is priced per image token only.
        image = BOOK.lookup("openai", "gpt-image-1")
        assert image is not None
        self.assertIsNone(estimate_cost("openai", "gpt-image-1", SIZE, {}, image.price))

    def test_price_found_in_tiers_only(self) -> None:
        """A price set only at a service tier or long-context tier still bounds its side."""
        price = ModelPrice(
            input=per_million("1"),
            tiers=(PriceTier(1000, ModelPrice(input=per_million("7"))),),
            service_tiers=(
                ("priority", ModelPrice(output=per_million("3"), output_audio=per_million("9"))),
            ),
        )
        found = estimate_cost("anthropic", "m", SIZE, {"max_tokens": 10}, price)
        self.assertEstimate(found, 10, "7", "9")

    def test_every_input_bucket(self) -> None:
        """Each input price field, when it is the highest, is the one the bound uses."""
        base = ModelPrice(input=per_million("1"), output=per_million("1"))
        for name in estimate.INPUT_PRICE_FIELDS:
            price = replace(base, **{name: per_million("50")})
            found = estimate_cost("anthropic", "m", SIZE, {"max_tokens": 1}, price)
            self.assertEstimate(found, 1, "50", "1")

    def test_body_size(self) -> None:
        """Input is the body's bytes plus the allowance; never below the allowance."""
        price = ModelPrice(input=per_million("2"), output=per_million("3"))
        for size in (0, 1, 10**6, 10**12):
            found = estimate_cost("openai", "m", size, {"max_tokens": 1}, price)
            self.assertEstimate(found, 1, "2", "3", size=size)
        found = estimate_cost("openai", "m", -5, {"max_tokens": 1}, price)
        self.assertEstimate(found, 1, "2", "3", size=0)

    def test_unknown_provider(self) -> None:
        """A provider whose members are not known: no cap is read."""
        price = ModelPrice(input=per_million("2"), output=per_million("3"), max_output_tokens=77)
        found = estimate_cost("bedrock", "m", SIZE, {"max_tokens": 1}, price)
        self.assertEstimate(found, 77, "2", "3")


class PriceTableLimitTests(SynchronousTestCase):
    """LiteLLM's max_output_tokens kept on ModelPrice: read sanely, layered, never a price."""

    def test_read_when_sane(self) -> None:
        entries = {
            f"m-{n}": {
                "litellm_provider": "openai",
                "input_cost_per_token": 1e-06,
                "output_cost_per_token": 2e-06,
                **({} if value is _ABSENT else {"max_output_tokens": value}),
            }
            for n, value in enumerate(
                [8192, None, "8192", 8192.0, True, 0, -1, MAX_SANE_OUTPUT_TOKENS + 1, _ABSENT]
            )
        }
        table = parse_litellm(entries)["openai"]
        limits = [table[f"m-{n}"].max_output_tokens for n in range(len(entries))]
        self.assertEqual(limits, [8192] + [None] * (len(entries) - 1))

    def test_not_a_price(self) -> None:
        """A limit alone is an empty price, shown nowhere as a price, and no LiteLLM entry."""
        self.assertTrue(ModelPrice(max_output_tokens=100).is_empty())
        self.assertEqual(
            price_fields(ModelPrice(input=Decimal(1), max_output_tokens=100)), {"input": Decimal(1)}
        )
        table = {"m": {"litellm_provider": "openai", "max_output_tokens": 100}}
        self.assertEqual(parse_litellm(table), {})

    def test_layered(self) -> None:
        """A price over another keeps the lower one's limit unless it has its own."""
        below = ModelPrice(input=Decimal(1), max_output_tokens=100)
        self.assertEqual(ModelPrice(output=Decimal(2)).layered_over(below).max_output_tokens, 100)
        over = ModelPrice(output=Decimal(2), max_output_tokens=5)
        self.assertEqual(over.layered_over(below).max_output_tokens, 5)

    def test_bundled_and_overridden(self) -> None:
        """The bundled book knows the limits (retired models' too); overrides keep them."""
        for provider, model, limit in (
            ("openai", "gpt-4o", 16384),
            ("openai", "gpt-4o-2024-08-06", 16384),
            ("anthropic", "claude-sonnet-4-5", 64000),
            ("gemini", "gemini-2.5-pro", 65536),
            ("anthropic", "claude-3-opus-20240229", 4096),  # retired
        ):
            match = BOOK.lookup(provider, model)
            assert match is not None, model
            self.assertEqual(match.price.max_output_tokens, limit, model)
        book = BOOK.with_overrides({"gpt-4o": {"input": 100, "output": 200}})
        match = book.lookup("openai", "gpt-4o")
        assert match is not None
        self.assertEqual(match.price.max_output_tokens, 16384)
        found = estimate_cost("openai", "gpt-4o", 0, {}, match.price)
        assert found is not None
        self.assertEqual(
            found.cost, PROVIDER_ADDED_TOKENS * per_million("100") + 16384 * per_million("200")
        )


class FromTheBodyTests(EstimateCase):
    """The members request_fields reads from a body are the ones the estimate needs."""

    def fields_of(self, document: dict[str, Any], pad: int = 0) -> dict[str, Any]:
        """
        What admission passes: the body's fields as request_fields.read gives
        them, parsed whole (a small body) or scanned in steps (C{pad} bytes more).
        """
        if pad:
            document = {"contents": ["x" * pad], **document}
        body = json.dumps(document).encode()
        clock = task.Clock()
        reading = defer.Deferred.fromCoroutine(request_fields.read(body, clock))
        steps = 0
        while not reading.called:
            clock.advance(0)
            steps += 1
        self.assertEqual(steps > 0, bool(pad))  # scanned in steps, or parsed at once
        found = self.successResultOf(reading)
        assert found is not None
        return found.values()

    def test_small_and_scanned_bodies(self) -> None:
        """Both a parsed and a scanned (over PARSED_BELOW) body give their caps."""
        for pad in (0, request_fields.PARSED_BELOW):
            fields = self.fields_of(
                {
                    "generationConfig": {
                        "temperature": 1,
                        "maxOutputTokens": 99,
                        "candidateCount": 2,
                    }
                },
                pad,
            )
            self.assertEstimate(estimated("gemini", "gemini-2.5-pro", fields), 198, "4.5", "27")
            fields = self.fields_of({"model": "gpt-4o", "max_completion_tokens": 7, "n": 3}, pad)
            self.assertEstimate(estimated("openai", "gpt-4o", fields), 21, "4.25", "17")
            fields = self.fields_of({"model": "claude-haiku-4-5", "max_tokens": 8}, pad)
            self.assertEstimate(estimated("anthropic", "claude-haiku-4-5", fields), 8, "2", "5")


class VectorBoundTests(SynchronousTestCase):
    """
    For every usage vector with a known cost, the cost the gateway prices
    its answer at (the bundled book, as tests.test_pricing checks) is at
    most the estimate admission makes from its request: the requested
    model's price, the members request_fields reads, the body's size.
    """

    def test_exact_cost_within_estimate(self) -> None:
        checked = capped = literal = 0
        for path in vector_files():
            name = os.path.basename(path)[:-5]
            vector = load_vector(path)
            provider = vector["provider"]
            exact = BOOK.cost(provider, vector_usage(vector)).total_cost
            if exact is None:
                continue
            body = json.dumps(vector["request_body"]).encode()
            read = request_fields.read_now(body)
            fields = read.values() if read is not None else None
            facts = providers.request_facts(provider, vector["request_path"], fields)
            match = BOOK.lookup(provider, facts.model)
            assert match is not None, name
            # A vector whose prompt is a stand-in ("(the whole repository)")
            # is sized as the smallest body that could have held its tokens.
            prompt_tokens = vector["expected"]["input_tokens"] or 0
            size = len(body)
            if prompt_tokens > size + PROVIDER_ADDED_TOKENS:
                size = prompt_tokens
            else:
                literal += 1
            found = estimate_cost(provider, facts.model, size, fields, match.price)
            assert found is not None, name
            self.assertLessEqual(exact, found.cost, name)
            self.assertGreaterEqual(found.input_tokens, prompt_tokens, name)
            self.assertGreaterEqual(
                found.output_tokens, vector["expected"]["output_tokens"] or 0, name
            )
            checked += 1
            capped += (
                any(cap in fields for cap in ("max_tokens", "max_output_tokens")) if fields else 0
            )
        # Every provider's vectors, capped and uncapped, literal bodies and stand-ins.
        self.assertGreaterEqual(checked, 35)
        self.assertGreaterEqual(capped, 10)
        self.assertGreaterEqual(literal, 20)
