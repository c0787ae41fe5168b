# -*- test-case-name: tests.test_cli -*-
"""
C{majordomo pricing show MODEL}: the price the gateway would use, and its
sources, described for a person; C{majordomo pricing coverage} is
L{majordomo.cli.coverage}.
"""

from __future__ import annotations

from typing import Any, TextIO

from twisted.python import usage

from majordomo import providers
from majordomo.cli.coverage import CoverageOptions, coverage_command
from majordomo.cli.options import CommandOptions
from majordomo.config import Config
from majordomo.pricing import configured_book
from majordomo.pricing.prices import ModelPrice, PriceMatch, price_fields


class PricingShowOptions(CommandOptions):
    synopsis = "MODEL [--provider openai|anthropic|gemini|azure]"
    optParameters = CommandOptions.optParameters + [
        ["provider", "p", None, "Provider (default: guessed from the model name)."]
    ]

    def parseArgs(self, model: str) -> None:  # type: ignore[override]
        self["model"] = model


class PricingOptions(usage.Options):
    synopsis = "show|coverage"
    subCommands = [
        ["show", None, PricingShowOptions, "Show the price used for a model."],
        ["coverage", None, CoverageOptions, "Unpriced models seen, and what the table prices."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("pricing needs a subcommand: show or coverage")


async def pricing_command(
    reactor: Any, config: Config, options: Any, out: TextIO, err: TextIO
) -> int:
    """C{majordomo pricing show|coverage}."""
    if options.subCommand == "coverage":
        return await coverage_command(reactor, config, options.subOptions, out)
    return show_price(config, options.subOptions["model"], options.subOptions["provider"], out)


_LABELS = {
    "input": "input",
    "output": "output (incl. reasoning)",
    "cached_input": "cache read",
    "cache_write_5m": "cache write, 5 min TTL",
    "cache_write_1h": "cache write, 1 h TTL",
    "cache_write": "cache write",
    "input_audio": "input audio",
    "output_audio": "output audio",
}
_TIER_BASIS = {
    "openai": "prompt tokens (cached and cache-write tokens included)",
    "azure": "prompt tokens (cached and cache-write tokens included)",
    "anthropic": "input tokens plus cache reads and writes",
    "gemini": "promptTokenCount (cached included, tool-use prompt tokens not)",
}


def _price_lines(price: ModelPrice) -> list[str]:
    """One line per known price, in USD per million tokens."""
    return [
        f"  {_LABELS[name]:<24} {value.scaleb(6).normalize():f}"
        for name, value in price_fields(price).items()
    ]


def _tier_lines(price: ModelPrice, provider: str, indent: str = "") -> list[str]:
    """The long-context tiers of C{price}, each with its prices."""
    lines = []
    for tier in price.tiers:
        lines.append(
            f"{indent}above {tier.above_input_tokens:,} {_TIER_BASIS[provider]}, "
            "the whole request costs:"
        )
        lines.extend(indent + line for line in _price_lines(tier.price))
    return lines


def describe(match: PriceMatch, provider: str) -> str:
    """A human description of a model's prices (USD per million) and their sources."""
    how = {
        "exact": "exact match",
        "override": "operator override",
        "snapshot_fallback": "snapshot fallback: this dated id is not priced, its base id is",
    }[match.match_kind]
    lines = [
        f"{match.pricing_key} on {provider} ({how})",
        f"source: {' over '.join(match.sources) or match.source}",
    ]
    if match.retired is not None:
        lines.append(
            "retired model: the current LiteLLM table no longer lists it, so this is its "
            f"last known price ({match.retired})"
        )
    lines += ["USD per million tokens:", *_price_lines(match.price)]
    if match.price.cached_input is None:
        lines.append("  (no cache-read price: requests with cache reads get no cost)")
    lines.extend(_tier_lines(match.price, provider))
    for name, price in match.price.service_tiers:
        lines.append(f'at service tier "{name}" (as the answer reports it), instead:')
        lines.extend(_price_lines(price))
        lines.extend(_tier_lines(price, provider, "  "))
        for tier in match.price.tiers:
            if price.tier_above(tier.above_input_tokens) is None:
                lines.append(
                    f"  above {tier.above_input_tokens:,} {_TIER_BASIS[provider]}: "
                    "no price at this tier (such requests get no cost)"
                )
    named = ", ".join(f'"{name}"' for name, _ in match.price.service_tiers)
    lines.append(
        f"service tier default/standard (or none reported): the prices above; any other"
        f"{' than ' + named if named else ''} has no price here (such requests get no cost)"
    )
    return "\n".join(lines)


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
