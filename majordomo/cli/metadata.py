# -*- test-case-name: tests.test_metadata -*-
"""
C{majordomo metadata list|activate|deactivate}: the X-Majordomo-* metadata
names a key's requests carry, and which of them are copied into
C{indexed_metadata}.
"""

from __future__ import annotations

from typing import Any, TextIO

from twisted.python import usage

from majordomo.cli.columns import format_time, write_columns
from majordomo.cli.options import CommandOptions
from majordomo.config import Config
from majordomo.db import Database
from majordomo.db.keys import MetadataRegistry
from majordomo.metadata import MetadataError, distinct_estimate, metadata_name


class _MetadataKeyOptions(CommandOptions):
    optParameters = CommandOptions.optParameters + [
        ["key-id", "k", None, "The API key id (required)."]
    ]

    def postOptions(self) -> None:
        if not self["key-id"]:
            raise usage.UsageError("--key-id is required")


class _MetadataNameOptions(_MetadataKeyOptions):
    synopsis = "--key-id ID NAME"

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        # The gateway's own rule: a name no request can carry is never stored.
        try:
            self["name"] = metadata_name(name)
        except MetadataError as e:
            raise usage.UsageError(str(e)) from None


class MetadataOptions(usage.Options):
    synopsis = "list|activate|deactivate --key-id ID [NAME]"
    subCommands = [
        ["list", None, _MetadataKeyOptions, "Metadata names a key's requests carry."],
        ["activate", None, _MetadataNameOptions, "Copy NAME into indexed_metadata."],
        ["deactivate", None, _MetadataNameOptions, "Stop copying NAME into indexed_metadata."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("metadata needs a subcommand: " + self.synopsis)


async def metadata_command(
    reactor: Any, config: Config, options: Any, out: TextIO, err: TextIO
) -> int:
    """C{majordomo metadata SUBCOMMAND}: list a key's names, or (de)activate one."""
    sub = options.subOptions
    db = Database(config.storage.postgres, reactor=reactor, pool_size=1)
    try:
        await db.connect_once()
        registry = MetadataRegistry(db)
        if options.subCommand == "list":
            names = await registry.list(sub["key-id"])
            if not names:
                out.write("No metadata seen on this key's requests yet.\n")
                return 0
            rows = [("NAME", "INDEXED", "REQUESTS", "DISTINCT VALUES (approx.)", "LAST SEEN")]
            rows += [
                (
                    m.name,
                    "yes" if m.is_active else "no",
                    str(m.request_count),
                    str(distinct_estimate(m.hll)),
                    format_time(m.last_seen_at),
                )
                for m in names
            ]
            write_columns(rows, out)
            return 0
        active = options.subCommand == "activate"
        await registry.set_active(sub["key-id"], sub["name"], active)
        state = "now copied into" if active else "no longer copied into"
        name, key_id = sub["name"], sub["key-id"]
        out.write(f"Metadata {name} is {state} indexed_metadata for key {key_id}.\n")
        return 0
    finally:
        db.close()
