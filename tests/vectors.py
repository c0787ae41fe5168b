"""
The usage/cost vectors in C{tests/vectors} (their format: its README.md).
Locating, loading, and turning their C{prices_used} into price overrides.
Missing vectors fail the tests that need them; they never skip.
"""

from __future__ import annotations

import glob
import json
import os
import re
from decimal import Decimal
from typing import Any

from twisted.web.http_headers import Headers

from majordomo.pricing.prices import PRICE_FIELDS
from majordomo.providers import served_tier
from majordomo.usage.choose import make_usage_parser

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")
# The cases numbered 01-99 came with the usage spec the project started from;
# the project's own (101 and up) sit in the same directory, numbered apart.
OWN_VECTORS = VECTORS
FIRST_OWN_NUMBER = 101
TOKEN_FIELDS = (
    "input_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "cache_creation_5m_tokens",
    "cache_creation_1h_tokens",
    "input_audio_tokens",
    "tool_use_prompt_tokens",
    "output_tokens",
    "reasoning_tokens",
    "output_audio_tokens",
    "web_search_requests",
)


def vector_files() -> list[str]:
    """
    Every vector file, in order of its number; an AssertionError if the
    directory is missing or holds none.
    """
    paths = glob.glob(os.path.join(VECTORS, "*.json"))
    if not paths:
        raise AssertionError(f"test vectors not found at {VECTORS}")
    return sorted(paths, key=os.path.basename)


def own_vector_files() -> list[str]:
    """
    The project's own vectors (numbered from L{FIRST_OWN_NUMBER}: service
    tiers, retired models, background answers), in order of their number.
    """
    return [
        path
        for path in vector_files()
        if int(os.path.basename(path).split("_", 1)[0]) >= FIRST_OWN_NUMBER
    ]


def load_vector(path: str) -> dict[str, Any]:
    """One vector as a dict."""
    with open(path, encoding="utf-8") as f:
        vector: dict[str, Any] = json.load(f)
    return vector


def vector_overrides(prices: dict[str, Any]) -> dict[str, Any]:
    """
    A vector's C{prices_used} in the overrides file's shape.  Where the case
    crosses a long-context tier, the top-level prices are the tier's and
    C{base_tier_for_reference} holds the base; the threshold is in C{tier}.
    A case served at a service tier has that tier's prices, in the overrides
    file's shape, under C{service_tiers} (tier name -> fields, with their own
    C{tiers}); a case at a tier with no price has none there.
    """
    given = {name: prices[name] for name in PRICE_FIELDS if name in prices}
    key = prices["pricing_key"].split()[0]
    base = prices.get("base_tier_for_reference")
    if base is None:
        override = given
    else:
        threshold = re.search(r">(\d+)k", prices["tier"])
        assert threshold is not None, prices["tier"]
        tier = {"above_input_tokens": int(threshold[1]) * 1000, **given}
        override = {**base, "tiers": [tier]}
    if prices.get("service_tiers"):
        override = {**override, "service_tiers": prices["service_tiers"]}
    return {key: override}


def expected_costs(vector: dict[str, Any]) -> tuple[Decimal | None, ...]:
    """The exact input, output and total cost a vector expects."""
    exact = vector["expected_cost_usd_exact"]
    return tuple(
        None if exact[k] is None else Decimal(exact[k]) for k in ("input", "output", "total")
    )


def vector_parser(vector: dict[str, Any], usage_requested: bool = True) -> Any:
    """
    The usage parser the gateway builds for a vector's response, its
    C{response_headers} (if any) included.
    """
    headers = Headers({k: [v] for k, v in (vector.get("response_headers") or {}).items()})
    return make_usage_parser(
        vector["provider"],
        vector["request_path"],
        status_code=vector["response_status"],
        content_type=vector["response_content_type"],
        request_model=vector["request_body"].get("model"),
        usage_requested=usage_requested,
        served_tier=served_tier(vector["provider"], headers),
    )
