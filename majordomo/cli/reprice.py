# -*- test-case-name: tests.test_reprice -*-
"""C{majordomo reprice}: recompute stored costs with the current prices (idempotent)."""

from __future__ import annotations

from datetime import date
from typing import Any, TextIO

from twisted.python import usage

from majordomo.cli.options import CommandOptions
from majordomo.config import Config
from majordomo.db import Database
from majordomo.ledger.reprice import reprice
from majordomo.pricing import configured_book


class RepriceOptions(CommandOptions):
    synopsis = "[--since YYYY-MM-DD] [--model MODEL]"
    longdesc = "Recompute stored costs with the current prices (idempotent)."
    optParameters = CommandOptions.optParameters + [
        ["since", "s", None, "Only requests that arrived on or after this date (UTC)."],
        ["model", "m", None, "Only requests for this model (as reported or requested)."],
    ]

    def postOptions(self) -> None:
        if self["since"] is not None:
            try:
                self["since"] = date.fromisoformat(self["since"])
            except ValueError:
                raise usage.UsageError(
                    f"--since: not a date (YYYY-MM-DD): {self['since']}"
                ) from None


async def reprice_command(
    reactor: Any, config: Config, options: Any, out: TextIO, err: TextIO
) -> int:
    """Reprice the selected rows with the configured book; report what changed."""
    db = Database(config.storage.postgres, reactor=reactor, pool_size=1)
    try:
        await db.connect_once()
        result = await reprice(db, configured_book(config), options["since"], options["model"])
    finally:
        db.close()
    out.write(
        f"Repriced {result.examined} requests: {result.changed} changed, "
        f"{result.unpriced} still without a price.\n"
    )
    return 0
