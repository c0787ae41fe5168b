# -*- test-case-name: tests.test_estimate -*-
"""
What a request can cost at most, known before it is sent: the amount
admission reserves against a budget until the exact cost, the
one that goes into the row, replaces it when the request ends.

The estimate is an upper bound made of three upper bounds:

 - B{input tokens}: a token is at least one byte of the text it encodes,
   and JSON never encodes text in fewer bytes than the text has, so a body
   of N bytes holds at most N tokens of what the client wrote.  To that is
   added L{PROVIDER_ADDED_TOKENS} for what the provider adds around it
   (message framing, the tool-use system prompts, a few image URLs).
   Base64 images make the bound far too high, which is conservative.
 - B{output tokens}: the request's own cap (which covers reasoning and
   thinking tokens too), times the answers it asks for (C{n}, C{best_of},
   C{candidateCount}); without a readable cap, the model's largest answer
   from the price table (LiteLLM's C{max_output_tokens}), else
   L{FALLBACK_OUTPUT_TOKENS}.
 - B{prices}: the highest price any input token can be billed at for the
   model (input, cache reads, cache writes of either TTL, audio input; at
   every long-context tier and every service tier), and likewise for
   output tokens (output, audio output), so the bound holds whichever tier
   and buckets the answer turns out to use.

Where it can be exceeded: content the provider fetches or holds rather than
the body carrying it (image and file URLs beyond the allowance, Gemini's
C{cachedContent}, OpenAI's C{previous_response_id}, C{conversation} and
stored prompts, the results server-side tools add to the prompt), and
charges per call rather than per token (web search, grounding, code
execution containers), which no token price covers.  The exact cost
replaces the estimate when the request ends, so an overshoot lasts one
request.

L{estimate_cost} is pure and constant-time: it never reads the body, only
its size and the few members L{majordomo.providers.request_fields} read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from majordomo.pricing.prices import ModelPrice, sane_token_limit
from majordomo.providers import ANTHROPIC, AZURE, GEMINI, OPENAI

# Tokens a provider may add to what the body says: OpenAI's per-message
# framing (about 4 tokens a message, fewer than the ~30 bytes a message's
# JSON takes), Anthropic's tool-use system prompt (up to ~350 tokens) and its
# client tools' definitions (computer use: ~1,200 tokens with its system
# prompt, from a ~60-byte tool entry), and an image URL or two (an OpenAI
# high-detail image is at most ~1,100 tokens, Anthropic's ~1,600).  4 Ki
# covers one of the heaviest of these with room to spare; more images than
# that by URL is where the bound can be exceeded (see the module docstring).
PROVIDER_ADDED_TOKENS = 4096
# The output bound of a model the price table gives no largest answer for,
# asked without a cap: 128 Ki tokens, the largest output limit of the
# mainstream models of every provider we route (GPT-5 family, Claude Opus,
# Gemini 3), and above the limit of most (16 Ki to 64 Ki).
FALLBACK_OUTPUT_TOKENS = 128_000
# The most answers one request can ask for: OpenAI's documented maximum for
# C{n} (C{best_of} stops at 20, Gemini's C{candidateCount} at 8).  A count
# that cannot be read is taken at this worst case; the provider would refuse
# most such requests, and a refused request costs nothing once it ends.
MAX_ANSWERS = 128

# Price fields each kind of token can be billed at.
INPUT_PRICE_FIELDS = (
    "input",
    "cached_input",
    "cache_write_5m",
    "cache_write_1h",
    "cache_write",
    "input_audio",
)
OUTPUT_PRICE_FIELDS = ("output", "output_audio")

# The request members that cap output, and those that multiply it, per provider.
_OPENAI_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_OPENAI_COUNTS = ("n", "best_of")
_GEMINI_CONFIGS = ("generationConfig", "generation_config")
_GEMINI_CAPS = ("maxOutputTokens", "max_output_tokens")
_GEMINI_COUNTS = ("candidateCount", "candidate_count")


@dataclass(frozen=True)
class Estimate:
    """The most a request can use and cost (USD), as admission reserves it."""

    input_tokens: int
    output_tokens: int
    cost: Decimal


def estimate_cost(
    provider: str,
    model: str | None,
    body_size: int,
    fields: dict[str, Any] | None,
    price: ModelPrice | None,
) -> Estimate | None:
    """
    The most the request can cost (see the module docstring for why this is
    an upper bound and where it is not), or C{None} when it cannot be priced:
    no model, no price, or no price for either input or output tokens.

    C{fields} are the body's members as L{request_fields} reads them
    (C{JSONObject.values()}), C{None} when the body is not a JSON object;
    C{price} is the model's price as the price book finds it.
    """
    if model is None or price is None:
        return None
    input_price, output_price = _dearest(price)
    if input_price is None or output_price is None:
        return None
    input_tokens = max(body_size, 0) + PROVIDER_ADDED_TOKENS
    caps, counts = _caps_and_counts(provider, fields or {})
    output_tokens = _output_cap(caps, price.max_output_tokens) * _answers(counts)
    cost = input_tokens * input_price + output_tokens * output_price
    return Estimate(input_tokens, output_tokens, cost)


# The dearest input and output prices of the prices seen lately, by identity:
# a price book is immutable (a refresh swaps in a new one), so a price object
# never changes, and its bounds are worked out once, not on every request.
_DEAREST: dict[int, tuple[ModelPrice, Decimal | None, Decimal | None]] = {}
_DEAREST_KEPT = 4096


def _dearest(price: ModelPrice) -> tuple[Decimal | None, Decimal | None]:
    """The highest input and output prices at any tier of C{price}."""
    known = _DEAREST.get(id(price))
    if known is not None and known[0] is price:
        return known[1], known[2]
    if len(_DEAREST) >= _DEAREST_KEPT:
        _DEAREST.clear()
    input_price = _highest(price, INPUT_PRICE_FIELDS)
    output_price = _highest(price, OUTPUT_PRICE_FIELDS)
    _DEAREST[id(price)] = (price, input_price, output_price)  # the price is kept: ids stay unique
    return input_price, output_price


def _highest(price: ModelPrice, names: tuple[str, ...]) -> Decimal | None:
    """The highest of the C{names} prices at any tier of C{price}; C{None} if none is set."""
    values = [
        value
        for flat in _every_price(price)
        for name in names
        if (value := getattr(flat, name)) is not None
    ]
    return max(values, default=None)


def _every_price(price: ModelPrice) -> Iterator[ModelPrice]:
    """
    C{price}, its long-context tiers, its service tiers and theirs: every
    price a bucket can be charged is set in one of them (a tier's flat
    price is its own, else the base's).
    """
    yield price
    for tier in price.tiers:
        yield from _every_price(tier.price)
    for _, served in price.service_tiers:
        yield from _every_price(served)


def _caps_and_counts(provider: str, fields: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """
    The values the request gives its output caps and its answer counts
    (absent and JSON C{null} members left out, as the provider ignores them).
    """
    if provider in (OPENAI, AZURE):
        return _present(fields, _OPENAI_CAPS), _present(fields, _OPENAI_COUNTS)
    if provider == ANTHROPIC:
        return _present(fields, ("max_tokens",)), []
    if provider == GEMINI:
        configs = [c for name in _GEMINI_CONFIGS if isinstance(c := fields.get(name), dict)]
        caps = [v for config in configs for v in _present(config, _GEMINI_CAPS)]
        counts = [v for config in configs for v in _present(config, _GEMINI_COUNTS)]
        return caps, counts
    return [], []


def _present(fields: dict[str, Any], names: tuple[str, ...]) -> list[Any]:
    return [value for name in names if (value := fields.get(name)) is not None]


def _output_cap(caps: list[Any], model_limit: int | None) -> int:
    """
    The most output tokens one answer can have: the largest cap the request
    gives (the endpoint is not known here, and the one it honours is among
    them), unless one of them is not a sane token count (a string, a float,
    a bool, zero, negative or absurd), when the request's caps say nothing
    sure and the model's own limit (else L{FALLBACK_OUTPUT_TOKENS}) applies.
    """
    limits = [sane_token_limit(cap) for cap in caps]
    if limits and None not in limits:
        return max(limit for limit in limits if limit is not None)
    return FALLBACK_OUTPUT_TOKENS if model_limit is None else model_limit


def _answers(counts: list[Any]) -> int:
    """How many answers the request is billed for: 1 unless it asks for more."""
    answers = 1
    for count in counts:
        readable = not isinstance(count, bool) and isinstance(count, int)
        answers = max(answers, count if readable and count <= MAX_ANSWERS else MAX_ANSWERS)
    return answers
