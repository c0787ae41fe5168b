# -*- test-case-name: tests.test_cli -*-
"""
The C{majordomo} command: C{serve}, C{keys ...}, C{proxy-keys ...},
C{secrets rotate}, C{db init}, C{pricing show}, C{pricing coverage},
C{reprice}, C{metadata ...}, C{usage}.

Each command group lives in its own module, exporting its options and an
C{async} command taking the reactor, the loaded configuration, its options
and the output and error streams, and returning an exit code (see
L{majordomo.cli.options.Command}); this module only parses and dispatches.
L{main} runs a command with C{task.react}; tests call L{run} inside their own
reactor with both streams captured.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import psycopg2
from twisted.internet import defer, task
from twisted.python import usage

from majordomo.cli.db import DbOptions, db_command
from majordomo.cli.keys import KeysOptions, keys_command
from majordomo.cli.metadata import MetadataOptions, metadata_command
from majordomo.cli.options import Command, CommandOptions
from majordomo.cli.pricing import PricingOptions, pricing_command
from majordomo.cli.proxy_keys import ProxyKeysOptions, proxy_keys_command
from majordomo.cli.report import UsageOptions, usage_command
from majordomo.cli.reprice import RepriceOptions, reprice_command
from majordomo.cli.secrets import SecretsOptions, secrets_command
from majordomo.cli.serve import ServeOptions, serve
from majordomo.config import ConfigError, load_config
from majordomo.db.keys import KeyNotFound


class Options(CommandOptions):
    synopsis = "majordomo [--config PATH] COMMAND ..."
    subCommands = [
        ["serve", None, ServeOptions, "Run the gateway in the foreground."],
        ["keys", None, KeysOptions, "Manage Majordomo API keys."],
        ["proxy-keys", None, ProxyKeysOptions, "Customer keys that stand for provider keys."],
        ["secrets", None, SecretsOptions, "Rotate the key that encrypts stored provider keys."],
        ["db", None, DbOptions, "Manage the database."],
        ["pricing", None, PricingOptions, "Inspect price data."],
        ["reprice", None, RepriceOptions, "Recompute stored costs with current prices."],
        ["metadata", None, MetadataOptions, "See and index X-Majordomo-* metadata names."],
        ["usage", None, UsageOptions, "Requests, tokens and spend by model, key, day, ..."],
    ]

    def __init__(self, stdout: TextIO) -> None:
        super().__init__()
        self.stdout = stdout

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("a command is required")

    def config_path(self) -> str | None:
        """--config from wherever it was given (the innermost wins)."""
        path = self["config"]
        options: Any = self
        while getattr(options, "subOptions", None) is not None:
            options = options.subOptions
            path = options.get("config") or path
        return path


_COMMANDS: dict[str, Command] = {
    "keys": keys_command,
    "proxy-keys": proxy_keys_command,
    "secrets": secrets_command,
    "db": db_command,
    "pricing": pricing_command,
    "reprice": reprice_command,
    "metadata": metadata_command,
    "usage": usage_command,
}


def _require_utf8(arg: str) -> None:
    """
    Refuse an argument that was not UTF-8: Python hands such bytes over as
    lone surrogates, which no database column or output stream can hold.
    """
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(arg)
        raise usage.UsageError(f"argument {raw!r} is not valid UTF-8") from None


def parse(argv: Sequence[str], out: TextIO | None = None) -> Options:
    """The parsed command line; C{--version} is written to C{out} (default: stdout)."""
    for arg in argv:
        _require_utf8(arg)
    options = Options(sys.stdout if out is None else out)
    options.parseOptions(list(argv))
    return options


def run(reactor: Any, argv: Sequence[str], out: TextIO, err: TextIO) -> defer.Deferred[int]:
    """Run a (non-serve) command; fires with its exit code.  Errors are one line on C{err}."""

    async def go() -> int:
        try:
            options = parse(argv, out)
            config = load_config(options.config_path())
            command = _COMMANDS[str(options.subCommand)]
            return await command(reactor, config, options.subOptions, out, err)
        except usage.UsageError as e:
            err.write(f"majordomo: {e}\n(see majordomo --help)\n")
            return 2
        except ConfigError as e:
            err.write(f"majordomo: configuration error: {e}\n")
            return 1
        except KeyNotFound as e:
            err.write(f"majordomo: no API key with id {e}\n")
            return 1
        except psycopg2.Error as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            err.write(f"majordomo: PostgreSQL error: {message}\n")
            return 1

    return defer.Deferred.fromCoroutine(go())


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: the process's own arguments and streams."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options = parse(args, sys.stdout)
    except usage.UsageError as e:
        sys.stderr.write(f"majordomo: {e}\n(see majordomo --help)\n")
        sys.exit(2)
    if options.subCommand == "serve":
        try:
            load_config(options.config_path())
        except ConfigError as e:
            sys.stderr.write(f"majordomo: configuration error: {e}\n")
            sys.exit(1)
        serve(options.config_path(), options.subOptions)
        return

    def react_main(reactor: Any) -> defer.Deferred[None]:
        d = run(reactor, args, sys.stdout, sys.stderr)

        def done(code: int) -> None:
            if code:
                raise SystemExit(code)

        return d.addCallback(done)

    task.react(react_main)
