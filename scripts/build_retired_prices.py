#!/usr/bin/env python3
"""
Collect the last published price of every model LiteLLM's table has dropped.

Usage: build_retired_prices.py [--index SIMPLE.json] [--current CURRENT.json]
                               OUTPUT WHEEL...

Each WHEEL is a C{litellm-X.Y.Z-*.whl} from PyPI (any order).  For every entry
of a provider we route (the providers of C{filter_litellm_prices.py}) whose
price-table id (C{majordomo.pricing.litellm.parse_litellm}'s table and
C{normalise_model}'s id) is missing from CURRENT (default: the bundled
C{majordomo/data/litellm-model-prices.json}), OUTPUT gets the entry of the
newest wheel that had it, unchanged, plus two fields naming where it came
from: C{majordomo_last_seen} (C{"litellm==1.63.14 (2025-03-22)"}) and
C{majordomo_source}.  An entry whose key LiteLLM later gave to an embedding
model (or the reverse) is taken from before the change.  Release dates come
from SIMPLE.json, the PEP 691 JSON page of PyPI's simple index for litellm,
when it is given.

Run it from the repository root with the project's venv;
majordomo/data/RETIRED.md says which wheels built the shipped file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from majordomo.pricing.litellm import parse_litellm  # noqa: E402
from majordomo.pricing.prices import PricingError, normalise_model  # noqa: E402

ROUTED_PROVIDERS = frozenset({"openai", "text-completion-openai", "anthropic", "gemini", "azure"})
TABLE_OF_PROVIDER = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "azure": "azure",
}
PRICES_MEMBER = "litellm/model_prices_and_context_window_backup.json"
SOURCE = "LiteLLM's price table (model_prices_and_context_window_backup.json) in the PyPI wheel"

_WHEEL_VERSION = re.compile(r"^litellm-(?P<version>[^-]+)-")


def version_key(version: str) -> tuple[int, ...]:
    """A sortable form of a release version such as C{1.74.15} or C{1.77.2.post1}."""
    return tuple(int(part) for part in re.findall(r"\d+", version))


def release_dates(index_path: str | None) -> dict[str, str]:
    """Version -> the day its first wheel was uploaded, from a PEP 691 index page."""
    if index_path is None:
        return {}
    with open(index_path, encoding="utf-8") as f:
        files = json.load(f)["files"]
    dates: dict[str, str] = {}
    for entry in files:
        match = _WHEEL_VERSION.match(entry["filename"])
        uploaded = entry.get("upload-time")
        if match and entry["filename"].endswith(".whl") and uploaded:
            version = match["version"]
            dates[version] = min(dates.get(version, uploaded[:10]), uploaded[:10])
    return dates


def read_wheel(path: str) -> tuple[str, dict[str, Any]]:
    """The version of a LiteLLM wheel and its price table."""
    match = _WHEEL_VERSION.match(Path(path).name)
    if match is None:
        raise SystemExit(f"{path}: not a litellm wheel name")
    with zipfile.ZipFile(path) as wheel:
        table = json.loads(wheel.read(PRICES_MEMBER))
    return match["version"], table


def table_ids(table: dict[str, Any]) -> dict[tuple[str, str], str]:
    """
    (price table, model id) -> the key of C{table} that prices it, choosing
    between keys as C{parse_litellm} does (the provider-prefixed key wins,
    otherwise the last one), and only for entries it accepts with a price.
    """
    chosen: dict[tuple[str, str], str] = {}
    prefixed: set[tuple[str, str]] = set()
    for key, entry in table.items():
        if not isinstance(entry, dict) or entry.get("litellm_provider") not in ROUTED_PROVIDERS:
            continue
        try:
            if not parse_litellm({key: entry}):
                continue
        except PricingError as e:
            print(f"skipped: {e}", file=sys.stderr)
            continue
        name = TABLE_OF_PROVIDER[entry["litellm_provider"]]
        table_id = (name, normalise_model(key))
        has_prefix = key.lower().startswith(f"{name}/")
        if table_id in prefixed and not has_prefix:
            continue
        if has_prefix:
            prefixed.add(table_id)
        chosen[table_id] = key
    return chosen


def label(version: str, dates: dict[str, str]) -> str:
    """C{litellm==1.63.14 (2025-03-22)}, or without the date if unknown."""
    day = dates.get(version)
    return f"litellm=={version}" + (f" ({day})" if day else "")


def changed_kind(entry: dict[str, Any], first: dict[str, Any]) -> bool:
    """
    True if C{entry} prices a different kind of model than the key first did:
    LiteLLM once put an embedding model under C{gemini/gemini-1.5-flash}.
    """
    kinds = {entry.get("mode"), first.get("mode")}
    return len(kinds) == 2 and "embedding" in kinds


def retired_entries(
    current: dict[str, Any], wheels: list[tuple[str, dict[str, Any]]], dates: dict[str, str]
) -> dict[str, Any]:
    """The newest entry of every id missing from C{current}, with its provenance."""
    live = set(table_ids(current))
    newest_first = sorted(wheels, key=lambda wheel: version_key(wheel[0]), reverse=True)
    first: dict[tuple[str, str], dict[str, Any]] = {}
    for _, table in reversed(newest_first):
        for table_id, key in table_ids(table).items():
            first.setdefault(table_id, table[key])
    taken: dict[tuple[str, str], str] = {}
    retired: dict[str, Any] = {}
    for version, table in newest_first:
        for table_id, key in table_ids(table).items():
            if table_id in live or table_id in taken:
                continue
            if changed_kind(table[key], first[table_id]):
                print(f"skipped {key} of litellm=={version}: mode changed", file=sys.stderr)
                continue
            if key in retired:
                raise SystemExit(f"{key}: one key for two price tables; cannot be stored")
            taken[table_id] = key
            retired[key] = dict(table[key])
            retired[key]["majordomo_last_seen"] = label(version, dates)
            retired[key]["majordomo_source"] = f"{SOURCE} litellm=={version}"
    return dict(sorted(retired.items()))


def main(argv: list[str]) -> int:
    """Read the wheels, write the retired entries to OUTPUT, report the counts."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--index", help="PEP 691 JSON of https://pypi.org/simple/litellm/")
    parser.add_argument(
        "--current", default=str(REPOSITORY / "majordomo/data/litellm-model-prices.json")
    )
    parser.add_argument("output")
    parser.add_argument("wheels", nargs="+")
    args = parser.parse_args(argv[1:])
    with open(args.current, encoding="utf-8") as f:
        current = json.load(f)
    wheels = [read_wheel(path) for path in args.wheels]
    retired = retired_entries(current, wheels, release_dates(args.index))
    with open(args.output, "w", encoding="utf-8") as f:
        # Floats round-trip exactly through repr, so values come out as they went in.
        json.dump(retired, f, indent=4, ensure_ascii=False)
        f.write("\n")
    counts: dict[str, int] = {}
    for entry in retired.values():
        counts[entry["litellm_provider"]] = counts.get(entry["litellm_provider"], 0) + 1
    print(f"{len(retired)} retired entries: {counts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
