#!/usr/bin/env python3
"""
Cut LiteLLM's price table down to the providers Majordomo routes.

Usage: filter_litellm_prices.py INPUT OUTPUT

INPUT is LiteLLM's model_prices_and_context_window(_backup).json; OUTPUT gets the
entries whose C{litellm_provider} is one we route, with keys, field order and
values unchanged (only the whitespace layout is re-rendered).  See
majordomo/data/README.md for how to refresh the bundled copy.
"""

from __future__ import annotations

import json
import sys
from typing import Any

ROUTED_PROVIDERS = frozenset({"openai", "text-completion-openai", "anthropic", "gemini", "azure"})


def filter_prices(table: dict[str, Any]) -> dict[str, Any]:
    """Keep the entries priced for a provider we route (drops sample_spec and the rest)."""
    return {
        key: entry
        for key, entry in table.items()
        if isinstance(entry, dict) and entry.get("litellm_provider") in ROUTED_PROVIDERS
    }


def main(argv: list[str]) -> int:
    """Read INPUT, write the filtered table to OUTPUT, report the counts."""
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        # Floats round-trip exactly through repr, so values come out as they went in.
        table = json.load(f)
    kept = filter_prices(table)
    with open(argv[2], "w", encoding="utf-8") as f:
        json.dump(kept, f, indent=4, ensure_ascii=False)
        f.write("\n")
    print(f"kept {len(kept)} of {len(table)} entries", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
