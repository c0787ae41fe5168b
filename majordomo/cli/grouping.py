# -*- test-case-name: tests.test_report -*-
"""
What C{majordomo usage --by} may group by: a fixed whitelist of SQL
fragments (model, key, day, provider, proxy key) plus C{metadata:NAME},
whose name only ever reaches PostgreSQL as a parameter.  The report itself
(the query around these fragments and its output) is L{majordomo.cli.report}.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.python import usage

from majordomo.metadata import MAX_NAME_LENGTH, PREFIX, canonical

_METADATA = "metadata:"
# What a proxy key grouping shows for requests that used no proxy key, and
# for a proxy key since deleted (its Majordomo key was deleted with it).
NO_PROXY_KEY = "(none)"
DELETED_PROXY_KEY = "(deleted)"


@dataclass(frozen=True)
class Grouping:
    """
    What a report is grouped by: the SQL (fixed text, never user input) and
    the names of the group's columns in JSON/CSV (C{fields}) and the table.
    """

    by: str
    fields: tuple[str, ...]
    headers: tuple[str, ...]
    select: str
    join: str = ""
    order: str = "total_cost DESC NULLS LAST, 1 NULLS LAST"
    metadata: str | None = None  # the canonical metadata name, sent as a parameter


def _simple(by: str, expression: str, field: str, order: str | None = None) -> Grouping:
    extra = {"order": order} if order else {}
    return Grouping(by, (field,), (field.upper(),), f"{expression} AS {field}", **extra)


# The whitelist: --by picks one of these, or metadata:NAME below.
GROUPINGS = {
    "model": _simple("model", "lr.model", "model"),
    "provider": _simple("provider", "lr.provider", "provider"),
    # The guide's DATE(created_at), pinned to UTC whatever the session's time zone.
    "day": _simple("day", "DATE(lr.created_at AT TIME ZONE 'UTC')", "date", "date DESC"),
    # As the guide's "Spend by API key": requests without a known key are not counted.
    "key": Grouping(
        "key",
        ("key_name", "key_id"),
        ("KEY", "KEY ID"),
        "ak.name AS key_name, ak.id::text AS key_id",
        join=" JOIN api_keys ak ON lr.majordomo_api_key_id = ak.id",
        order="total_cost DESC NULLS LAST, 1, 2",
    ),
    # Every request counts: those sent with the provider's own key are one
    # "(none)" group (its id NULL), so the groups add up to --by model's.
    "proxy-key": Grouping(
        "proxy-key",
        ("proxy_key_name", "proxy_key_id"),
        ("PROXY KEY", "PROXY KEY ID"),
        f"CASE WHEN lr.proxy_key_id IS NULL THEN '{NO_PROXY_KEY}' "
        f"ELSE COALESCE(pk.name, '{DELETED_PROXY_KEY}') END AS proxy_key_name, "
        "lr.proxy_key_id::text AS proxy_key_id",
        join=" LEFT JOIN proxy_keys pk ON lr.proxy_key_id = pk.id",
        order="total_cost DESC NULLS LAST, 1, 2 NULLS LAST",
    ),
}
GROUPING_NAMES = "model, key, day, provider, proxy-key or metadata:NAME"


def parse_grouping(value: str) -> Grouping:
    """The grouping C{--by VALUE} names; raises L{usage.UsageError} for anything else."""
    if value.lower() in GROUPINGS:
        return GROUPINGS[value.lower()]
    if value.lower().startswith(_METADATA):
        name = value[len(_METADATA) :].strip()
        if name.lower().startswith(PREFIX):  # the header's name, X-Majordomo-User-Id
            name = name[len(PREFIX) :]
        name = canonical(name)
        if not name.strip("-") or len(name) > MAX_NAME_LENGTH:
            raise usage.UsageError(
                f"--by metadata:NAME needs a name of 1 to {MAX_NAME_LENGTH} characters"
            )
        return Grouping(
            "metadata",
            (name,),
            (name.upper(),),
            "lr.raw_metadata->>%(name)s AS value",
            metadata=name,
        )
    raise usage.UsageError(f"--by: expected {GROUPING_NAMES}, got {value!r}")
