# -*- test-case-name: tests.test_cli -*-
"""C{majordomo db init}: create the database if it is missing and apply the schema."""

from __future__ import annotations

from typing import Any, TextIO

from twisted.python import usage

from majordomo.cli.options import CommandOptions
from majordomo.config import Config
from majordomo.db.schema import apply_schema


class DbOptions(usage.Options):
    synopsis = "init"
    subCommands = [
        ["init", None, CommandOptions, "Create the database if missing and apply schema.sql."]
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("db needs a subcommand: init")


async def db_command(reactor: Any, config: Config, options: Any, out: TextIO, err: TextIO) -> int:
    """C{majordomo db init}."""
    created = await apply_schema(reactor, config.storage.postgres)
    pg = config.storage.postgres
    if created:
        out.write(f"Created database {pg.database}.\n")
    out.write(f"Schema applied to {pg.database} on {pg.host}:{pg.port}.\n")
    return 0
