# -*- test-case-name: tests.test_cli -*-
"""
What every C{majordomo} subcommand shares: its options' base class (C{--config}
anywhere, options after positional arguments), the signature of a command,
and the reading of dates given on the command line.
"""

from __future__ import annotations

import getopt
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import date
from typing import Any, TextIO

from twisted.python import usage

from majordomo import __version__
from majordomo.config import Config

# A subcommand: the reactor, the loaded configuration, its parsed options and
# the output and error streams in; its exit code out.
Command = Callable[[Any, Config, Any, TextIO, TextIO], Awaitable[int]]

_DATE = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")


class CommandOptions(usage.Options):
    """
    Every subcommand accepts --config too, so it can go anywhere, and options
    may follow positional arguments (`keys update ID --name X`).

    C{--version} writes to the C{stdout} of the outermost options (the
    stream L{majordomo.cli.parse} was given).
    """

    optParameters: list[list[Any]] = [
        ["config", "c", None, "Configuration file (default: ./majordomo.yaml)."]
    ]

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        if options is None or getattr(self, "subCommands", None):
            return super().parseOptions(options)
        try:
            opts, args = getopt.gnu_getopt(list(options), self.shortOpt, self.longOpt)
        except getopt.GetoptError as e:
            raise usage.UsageError(str(e)) from None
        ordered: list[str] = []
        for flag, value in opts:
            takes_value = (
                flag[2:] + "=" in self.longOpt
                if flag.startswith("--")
                else flag[1:] + ":" in self.shortOpt
            )
            ordered += [flag, value] if takes_value else [flag]
        super().parseOptions(ordered + ["--"] + args)

    def opt_version(self) -> None:
        """Display the Majordomo Gateway version and exit."""
        outermost: Any = self
        while getattr(outermost, "parent", None) is not None:
            outermost = outermost.parent
        outermost.stdout.write(f"majordomo {__version__}\n")
        raise SystemExit(0)


def parse_date(flag: str, value: str | None) -> date | None:
    """An ISO date (YYYY-MM-DD) given to C{flag}; a L{usage.UsageError} otherwise."""
    if value is None:
        return None
    try:
        if not _DATE.match(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise usage.UsageError(f"{flag}: not a date (YYYY-MM-DD): {value}") from None
