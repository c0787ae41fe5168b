"""
The shared usage/cost vectors (../shared/vectors): locating, loading, and
turning their C{prices_used} into price overrides.  Missing vectors fail the
tests that need them; they never skip.
"""

from __future__ import annotations

import glob
import json
import os
import re
from decimal import Decimal
from typing import Any

from majordomo.pricing_sources import PRICE_FIELDS

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "vectors")
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
    """The shared vector files; an AssertionError if the directory is missing."""
    if not os.path.isdir(VECTORS):
        raise AssertionError(f"test vectors not found at {os.path.abspath(VECTORS)}")
    return sorted(glob.glob(os.path.join(VECTORS, "*.json")))


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
    """
    given = {name: prices[name] for name in PRICE_FIELDS if name in prices}
    key = prices["pricing_key"].split()[0]
    base = prices.get("base_tier_for_reference")
    if base is None:
        return {key: given}
    threshold = re.search(r">(\d+)k", prices["tier"])
    assert threshold is not None, prices["tier"]
    tier = {"above_input_tokens": int(threshold[1]) * 1000, **given}
    return {key: {**base, "tiers": [tier]}}


def expected_costs(vector: dict[str, Any]) -> tuple[Decimal | None, ...]:
    """The exact input, output and total cost a vector expects."""
    exact = vector["expected_cost_usd_exact"]
    return tuple(
        None if exact[k] is None else Decimal(exact[k]) for k in ("input", "output", "total")
    )
