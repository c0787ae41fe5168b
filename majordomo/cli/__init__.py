# -*- test-case-name: tests.test_cli -*-
"""
The C{majordomo} command: C{serve}, C{keys ...}, C{db init}, C{pricing show},
C{pricing coverage}.

Each subcommand is an C{async} function taking the reactor, the loaded
configuration, its options and the output streams, and returning an exit
code; L{main} runs one with C{task.react}.  Tests call L{run} inside their own
reactor with stdout/stderr captured.
"""

from __future__ import annotations

import getopt
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import date
from typing import Any, TextIO

import psycopg2
from twisted.internet import defer, task
from twisted.python import usage

from majordomo import __version__
from majordomo.config import Config, ConfigError, load_config
from majordomo.db import Database
from majordomo.db.keys import ApiKey, KeyNotFound, KeyStore
from majordomo.db.schema import apply_schema
from majordomo.metadata import MetadataError, metadata_name


class _CommandOptions(usage.Options):
    """
    Every subcommand accepts --config too, so it can go anywhere, and options
    may follow positional arguments (`keys update ID --name X`).
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
        print(f"majordomo {__version__}")
        sys.exit(0)


class ServeOptions(_CommandOptions):
    synopsis = "[--config PATH] [--workers N] [--log-format text|json]"
    longdesc = "Run the gateway in the foreground (same as twistd -n majordomo)."
    optParameters = _CommandOptions.optParameters + [
        ["workers", "w", 1, "Gateway processes sharing the port (SO_REUSEPORT).", int],
        [
            "log-format",
            None,
            "text",
            "text (one plain line per event) or json (one object per line).",
        ],
    ]

    def postOptions(self) -> None:
        if self["workers"] < 1:
            raise usage.UsageError("--workers must be at least 1")
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")


class KeysCreateOptions(_CommandOptions):
    synopsis = "--name NAME [--description TEXT]"
    optParameters = _CommandOptions.optParameters + [
        ["name", "n", None, "A name for the key (required)."],
        ["description", "d", None, "What the key is for."],
    ]

    def postOptions(self) -> None:
        if not self["name"]:
            raise usage.UsageError("--name is required")


class _KeyIdOptions(_CommandOptions):
    synopsis = "KEY_ID"

    def parseArgs(self, key_id: str) -> None:  # type: ignore[override]
        self["key_id"] = key_id


class KeysUpdateOptions(_KeyIdOptions):
    synopsis = "KEY_ID [--name NAME] [--description TEXT]"
    optParameters = _CommandOptions.optParameters + [
        ["name", "n", None, "New name."],
        ["description", "d", None, "New description."],
    ]

    def postOptions(self) -> None:
        if self["name"] is None and self["description"] is None:
            raise usage.UsageError("give --name and/or --description")


class KeysOptions(usage.Options):
    synopsis = "create|list|get|update|revoke"
    subCommands = [
        ["create", None, KeysCreateOptions, "Create an API key (shown once)."],
        ["list", None, _CommandOptions, "List API keys."],
        ["get", None, _KeyIdOptions, "Show one API key."],
        ["update", None, KeysUpdateOptions, "Rename or describe an API key."],
        ["revoke", None, _KeyIdOptions, "Revoke an API key at once."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("keys needs a subcommand: " + self.synopsis)


class DbOptions(usage.Options):
    synopsis = "init"
    subCommands = [
        ["init", None, _CommandOptions, "Create the database if missing and apply schema.sql."]
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("db needs a subcommand: init")


class PricingShowOptions(_CommandOptions):
    synopsis = "MODEL [--provider openai|anthropic|gemini|azure]"
    optParameters = _CommandOptions.optParameters + [
        ["provider", "p", None, "Provider (default: guessed from the model name)."]
    ]

    def parseArgs(self, model: str) -> None:  # type: ignore[override]
        self["model"] = model


def _coverage_options() -> usage.Options:
    # Imported when used: majordomo.cli.coverage builds on _CommandOptions above.
    from majordomo.cli.coverage import CoverageOptions

    return CoverageOptions()


class PricingOptions(usage.Options):
    synopsis = "show|coverage"
    subCommands = [
        ["show", None, PricingShowOptions, "Show the price used for a model."],
        ["coverage", None, _coverage_options, "Unpriced models seen, and what the table prices."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("pricing needs a subcommand: show or coverage")


class _MetadataKeyOptions(_CommandOptions):
    optParameters = _CommandOptions.optParameters + [
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


class RepriceOptions(_CommandOptions):
    synopsis = "[--since YYYY-MM-DD] [--model MODEL]"
    longdesc = "Recompute stored costs with the current prices (idempotent)."
    optParameters = _CommandOptions.optParameters + [
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


def _usage_options() -> usage.Options:
    # Imported when used: majordomo.cli.report builds on _CommandOptions above.
    from majordomo.cli.report import UsageOptions

    return UsageOptions()


async def _usage(reactor: Any, config: Config, options: Any, out: TextIO) -> int:
    from majordomo.cli.report import usage_command

    return await usage_command(reactor, config, options, out)


class Options(_CommandOptions):
    synopsis = "majordomo [--config PATH] COMMAND ..."
    subCommands = [
        ["serve", None, ServeOptions, "Run the gateway in the foreground."],
        ["keys", None, KeysOptions, "Manage Majordomo API keys."],
        ["db", None, DbOptions, "Manage the database."],
        ["pricing", None, PricingOptions, "Inspect price data."],
        ["reprice", None, RepriceOptions, "Recompute stored costs with current prices."],
        ["metadata", None, MetadataOptions, "See and index X-Majordomo-* metadata names."],
        ["usage", None, _usage_options, "Requests, tokens and spend by model, key, day, ..."],
    ]

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


Command = Callable[[Any, Config, Any, TextIO], Awaitable[int]]


def _format_time(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if value else "never"


def _status(key: ApiKey) -> str:
    return "active" if key.is_active else "revoked"


async def _keys_create(store: KeyStore, options: Any, out: TextIO) -> int:
    key, plaintext = await store.create(options["name"], options["description"])
    out.write(
        "API Key created successfully!\n\n"
        f"  ID:   {key.id}\n"
        f"  Name: {key.name}\n"
        f"  Key:  {plaintext}\n\n"
        "\u26a0\ufe0f  Save this key now - it cannot be retrieved later.\n"
    )
    return 0


async def _keys_list(store: KeyStore, options: Any, out: TextIO) -> int:
    keys = await store.list()
    if not keys:
        out.write("No API keys yet. Create one with: majordomo keys create --name NAME\n")
        return 0
    rows = [("ID", "NAME", "STATUS", "REQUESTS", "LAST USED", "CREATED")]
    for key in keys:
        rows.append(
            (
                str(key.id),
                key.name,
                _status(key),
                str(key.request_count),
                _format_time(key.last_used_at),
                _format_time(key.created_at),
            )
        )
    _write_table(rows, out)
    return 0


def _write_table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    """Rows as aligned columns, the first row being the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")


def _describe_key(key: ApiKey, out: TextIO) -> None:
    out.write(
        f"  ID:          {key.id}\n"
        f"  Name:        {key.name}\n"
        f"  Description: {key.description or ''}\n"
        f"  Status:      {_status(key)}\n"
        f"  Requests:    {key.request_count}\n"
        f"  Last used:   {_format_time(key.last_used_at)}\n"
        f"  Created:     {_format_time(key.created_at)}\n"
    )
    if key.revoked_at:
        out.write(f"  Revoked:     {_format_time(key.revoked_at)}\n")


async def _keys_get(store: KeyStore, options: Any, out: TextIO) -> int:
    _describe_key(await store.get(options["key_id"]), out)
    return 0


async def _keys_update(store: KeyStore, options: Any, out: TextIO) -> int:
    key = await store.update(options["key_id"], options["name"], options["description"])
    out.write("API key updated.\n\n")
    _describe_key(key, out)
    return 0


async def _keys_revoke(store: KeyStore, options: Any, out: TextIO) -> int:
    key = await store.revoke(options["key_id"])
    out.write(f"API key {key.id} ({key.name}) revoked. Requests using it now get 401.\n")
    return 0


_KEY_COMMANDS = {
    "create": _keys_create,
    "list": _keys_list,
    "get": _keys_get,
    "update": _keys_update,
    "revoke": _keys_revoke,
}


async def _keys(reactor: Any, config: Config, options: Any, out: TextIO) -> int:
    db = Database(config.storage.postgres, reactor=reactor, pool_size=1)
    try:
        await db.connect_once()
        return await _KEY_COMMANDS[options.subCommand](KeyStore(db), options.subOptions, out)
    finally:
        db.close()


async def _db(reactor: Any, config: Config, options: Any, out: TextIO) -> int:
    created = await apply_schema(reactor, config.storage.postgres)
    pg = config.storage.postgres
    if created:
        out.write(f"Created database {pg.database}.\n")
    out.write(f"Schema applied to {pg.database} on {pg.host}:{pg.port}.\n")
    return 0


async def _pricing(reactor: Any, config: Config, options: Any, out: TextIO) -> int:
    from majordomo.cli.pricing import show_price

    if options.subCommand == "coverage":
        from majordomo.cli.coverage import coverage_command

        return await coverage_command(reactor, config, options.subOptions, out)

    return show_price(config, options.subOptions["model"], options.subOptions["provider"], out)


async def _reprice(reactor: Any, config: Config, options: Any, out: TextIO) -> int:
    from majordomo.ledger.reprice import reprice
    from majordomo.pricing import configured_book

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


async def _metadata(reactor: Any, config: Config, options: Any, out: TextIO) -> int:
    from majordomo.db.keys import MetadataRegistry
    from majordomo.metadata import distinct_estimate

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
                    _format_time(m.last_seen_at),
                )
                for m in names
            ]
            _write_table(rows, out)
            return 0
        active = options.subCommand == "activate"
        await registry.set_active(sub["key-id"], sub["name"], active)
        state = "now copied into" if active else "no longer copied into"
        name, key_id = sub["name"], sub["key-id"]
        out.write(f"Metadata {name} is {state} indexed_metadata for key {key_id}.\n")
        return 0
    finally:
        db.close()


def _serve(config_path: str | None, options: Any) -> None:
    """Hand over to twistd in the foreground (or supervise several, with --workers)."""
    config_args = ["--config", config_path] if config_path else []
    if options["workers"] > 1:
        from majordomo.workers import run_workers

        worker = [sys.executable, "-m", "majordomo", "serve", "--log-format"]
        sys.exit(run_workers(options["workers"], worker + [options["log-format"], *config_args]))
    from twisted.scripts import twistd

    observer = "json_observer" if options["log-format"] == "json" else "console_observer"
    sys.argv = [
        "twistd",
        "--nodaemon",
        "--pidfile=",
        f"--logger=majordomo.logs.{observer}",
        "majordomo",
        *config_args,
    ]
    twistd.run()


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


_COMMANDS: dict[str, Command] = {
    "keys": _keys,
    "db": _db,
    "pricing": _pricing,
    "reprice": _reprice,
    "metadata": _metadata,
    "usage": _usage,
}


def parse(argv: Sequence[str]) -> Options:
    for arg in argv:
        _require_utf8(arg)
    options = Options()
    options.parseOptions(list(argv))
    return options


def run(reactor: Any, argv: Sequence[str], out: TextIO, err: TextIO) -> defer.Deferred[int]:
    """Run a (non-serve) command; fires with its exit code.  Errors are one line on C{err}."""

    async def go() -> int:
        try:
            options = parse(argv)
            config = load_config(options.config_path())
            command = _COMMANDS[str(options.subCommand)]
            return await command(reactor, config, options.subOptions, out)
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
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options = parse(args)
    except usage.UsageError as e:
        sys.stderr.write(f"majordomo: {e}\n(see majordomo --help)\n")
        sys.exit(2)
    if options.subCommand == "serve":
        try:
            load_config(options.config_path())
        except ConfigError as e:
            sys.stderr.write(f"majordomo: configuration error: {e}\n")
            sys.exit(1)
        _serve(options.config_path(), options.subOptions)
        return

    def react_main(reactor: Any) -> defer.Deferred[None]:
        d = run(reactor, args, sys.stdout, sys.stderr)

        def done(code: int) -> None:
            if code:
                raise SystemExit(code)

        return d.addCallback(done)

    task.react(react_main)
