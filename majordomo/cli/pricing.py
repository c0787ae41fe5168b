# -*- test-case-name: tests.test_cli -*-
"""C{majordomo pricing show MODEL}: the price the gateway would use, and its source."""

from __future__ import annotations

from typing import TextIO

from majordomo import providers
from majordomo.config import Config
from majordomo.pricing import configured_book, describe


def guess_provider(model: str) -> str:
    """The provider a model name most likely belongs to (for the default of --provider)."""
    name = model.lower().rsplit("/", 1)[-1]
    if name.startswith("claude"):
        return providers.ANTHROPIC
    if name.startswith(("gemini", "gemma")):
        return providers.GEMINI
    return providers.OPENAI


def show_price(config: Config, model: str, provider: str | None, out: TextIO) -> int:
    """Print the price of C{model}; exit code 1 when it has none (its cost would be NULL)."""
    provider = provider or guess_provider(model)
    match = configured_book(config).lookup(provider, model)
    if match is None:
        out.write(
            f"No price for {model} on {provider}: requests for it are logged with cost NULL.\n"
            f"Add it to the file named by pricing.overrides_file to price it.\n"
        )
        return 1
    out.write(describe(match, provider) + "\n")
    return 0
