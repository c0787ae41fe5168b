# -*- test-case-name: tests.test_keys -*-
"""
C{majordomo keys create|list|get|update|revoke}: the gateway's API keys; and
C{majordomo keys policy ...}, their rules (L{majordomo.cli.policy}).
"""

from __future__ import annotations

from typing import Any, TextIO

from twisted.python import usage

from majordomo.cli.columns import format_time, write_columns
from majordomo.cli.options import CommandOptions
from majordomo.cli.policy import PolicyOptions, policy_command
from majordomo.config import Config
from majordomo.db import Database
from majordomo.db.keys import ApiKey, KeyStore


class KeysCreateOptions(CommandOptions):
    synopsis = "--name NAME [--description TEXT]"
    optParameters = CommandOptions.optParameters + [
        ["name", "n", None, "A name for the key (required)."],
        ["description", "d", None, "What the key is for."],
    ]

    def postOptions(self) -> None:
        if not self["name"]:
            raise usage.UsageError("--name is required")


class _KeyIdOptions(CommandOptions):
    synopsis = "KEY_ID"

    def parseArgs(self, key_id: str) -> None:  # type: ignore[override]
        self["key_id"] = key_id


class KeysUpdateOptions(_KeyIdOptions):
    synopsis = "KEY_ID [--name NAME] [--description TEXT]"
    optParameters = CommandOptions.optParameters + [
        ["name", "n", None, "New name."],
        ["description", "d", None, "New description."],
    ]

    def postOptions(self) -> None:
        if self["name"] is None and self["description"] is None:
            raise usage.UsageError("give --name and/or --description")


class KeysOptions(usage.Options):
    synopsis = "create|list|get|update|revoke|policy"
    subCommands = [
        ["create", None, KeysCreateOptions, "Create an API key (shown once)."],
        ["list", None, CommandOptions, "List API keys."],
        ["get", None, _KeyIdOptions, "Show one API key."],
        ["update", None, KeysUpdateOptions, "Rename or describe an API key."],
        ["revoke", None, _KeyIdOptions, "Revoke an API key at once."],
        ["policy", None, PolicyOptions, "A key's budget, model rules and rate limits."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("keys needs a subcommand: " + self.synopsis)


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
                format_time(key.last_used_at),
                format_time(key.created_at),
            )
        )
    write_columns(rows, out)
    return 0


def _describe_key(key: ApiKey, out: TextIO) -> None:
    out.write(
        f"  ID:          {key.id}\n"
        f"  Name:        {key.name}\n"
        f"  Description: {key.description or ''}\n"
        f"  Status:      {_status(key)}\n"
        f"  Requests:    {key.request_count}\n"
        f"  Last used:   {format_time(key.last_used_at)}\n"
        f"  Created:     {format_time(key.created_at)}\n"
    )
    if key.revoked_at:
        out.write(f"  Revoked:     {format_time(key.revoked_at)}\n")


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


async def keys_command(reactor: Any, config: Config, options: Any, out: TextIO, err: TextIO) -> int:
    """C{majordomo keys SUBCOMMAND}: one key operation on its own connection."""
    db = Database(config.storage.postgres, reactor=reactor, pool_size=1)
    try:
        await db.connect_once()
        if options.subCommand == "policy":
            return await policy_command(db, options.subOptions, out)
        return await _KEY_COMMANDS[options.subCommand](KeyStore(db), options.subOptions, out)
    finally:
        db.close()
