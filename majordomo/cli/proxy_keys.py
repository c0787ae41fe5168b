# -*- test-case-name: tests.test_proxykeys_cli -*-
"""
C{majordomo proxy-keys create|set-provider|remove-provider|list|get|list-providers|revoke}:
the C{mdm_pk_} keys handed to customers, each belonging to a Majordomo key,
and the provider keys the gateway swaps in for them.

The plaintext proxy key is printed once, by C{create}; a provider key is
read from stdin or a no-echo prompt (L{majordomo.cli.secrets.read_secret}),
stored encrypted, and never shown again: C{list-providers} gives only which
providers are set and the fingerprint of the encryption key that sealed
each.  Every change NOTIFYs the key channel, so running gateways apply it
within a second.
"""

from __future__ import annotations

from typing import Any, TextIO

from twisted.python import usage

from majordomo.cli.columns import format_time, write_columns
from majordomo.cli.options import CommandOptions
from majordomo.cli.secrets import NO_ENCRYPTION_KEY, SecretInputError, read_secret
from majordomo.config import Config
from majordomo.db import Database
from majordomo.logtext import printable
from majordomo.proxykeys.store import (
    PROVIDERS,
    ProviderError,
    ProviderMapping,
    ProxyKey,
    ProxyKeyNotFound,
    ProxyKeyStore,
)
from majordomo.vault import VaultError, configured_box, previous_boxes

APPLIED = "Running gateways apply it within a second.\n"


class NothingToRemove(Exception):
    """The proxy key has no key for the provider named (one line for the operator)."""


class ProxyKeysCreateOptions(CommandOptions):
    synopsis = "--name NAME --majordomo-key-id ID [--description TEXT]"
    optParameters = CommandOptions.optParameters + [
        ["name", "n", None, "A name for the proxy key (required): the customer or app."],
        ["majordomo-key-id", None, None, "The Majordomo API key it belongs to (required)."],
        ["description", "d", None, "What the proxy key is for."],
    ]

    def postOptions(self) -> None:
        if not self["name"]:
            raise usage.UsageError("--name is required")
        if not self["majordomo-key-id"]:
            raise usage.UsageError("--majordomo-key-id is required")


class _ProxyKeyIdOptions(CommandOptions):
    synopsis = "PK_ID"

    def parseArgs(self, proxy_key_id: str) -> None:  # type: ignore[override]
        self["proxy_key_id"] = proxy_key_id


class _ProviderOptions(_ProxyKeyIdOptions):
    synopsis = "PK_ID --provider " + "|".join(PROVIDERS)
    optParameters = CommandOptions.optParameters + [
        ["provider", "p", None, "openai, anthropic, gemini or azure (required)."],
    ]

    def postOptions(self) -> None:
        if not self["provider"]:
            raise usage.UsageError("--provider is required")
        if self["provider"] not in PROVIDERS:
            given = printable(self["provider"])
            raise usage.UsageError(
                f"--provider must be one of {', '.join(PROVIDERS)}, got {given!r}"
            )


class ProxyKeysSetProviderOptions(_ProviderOptions):
    longdesc = (
        "The provider key is read from stdin when it is not a terminal "
        "(`majordomo proxy-keys set-provider PK_ID --provider openai < key.txt`), "
        "else from a prompt that does not echo it; never from the command line."
    )


class ProxyKeysListOptions(CommandOptions):
    synopsis = "[--majordomo-key-id ID]"
    optParameters = CommandOptions.optParameters + [
        ["majordomo-key-id", None, None, "Only the proxy keys of this Majordomo key."],
    ]


class ProxyKeysOptions(usage.Options):
    synopsis = "create|set-provider|remove-provider|list|get|list-providers|revoke"
    subCommands = [
        ["create", None, ProxyKeysCreateOptions, "Create a proxy key (shown once)."],
        ["set-provider", None, ProxyKeysSetProviderOptions, "Store a provider key for it."],
        ["remove-provider", None, _ProviderOptions, "Remove one of its provider keys."],
        ["list", None, ProxyKeysListOptions, "List proxy keys."],
        ["get", None, _ProxyKeyIdOptions, "Show one proxy key and its providers."],
        [
            "list-providers",
            None,
            _ProxyKeyIdOptions,
            "Which provider keys it has (never the keys).",
        ],
        ["revoke", None, _ProxyKeyIdOptions, "Revoke a proxy key at once."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("proxy-keys needs a subcommand: " + self.synopsis)


def _status(key: ProxyKey) -> str:
    return "active" if key.is_active else "revoked"


def _title(key: ProxyKey, start: str = "proxy key") -> str:
    return f"{start} {key.id} ({printable(key.name)})"


async def _create(store: ProxyKeyStore, reactor: Any, options: Any, out: TextIO) -> int:
    key, plaintext = await store.create(
        options["majordomo-key-id"], options["name"], options["description"]
    )
    out.write(
        "Proxy key created successfully!\n\n"
        f"  ID:            {key.id}\n"
        f"  Name:          {printable(key.name)}\n"
        f"  Majordomo key: {key.majordomo_api_key_id}\n"
        f"  Key:           {plaintext}\n\n"
        "\u26a0\ufe0f  Save this key now - it cannot be retrieved later.\n"
    )
    return 0


async def _set_provider(store: ProxyKeyStore, reactor: Any, options: Any, out: TextIO) -> int:
    provider = options["provider"]
    key = await store.get(options["proxy_key_id"])  # an unknown id fails before the prompt
    secret = await read_secret(reactor, f"{provider} API key for {_title(key)}: ", "provider key")
    if secret.startswith("mdm_"):
        raise SecretInputError("that is a Majordomo key, not a provider key")
    await store.set_provider(key.id, provider, secret)
    out.write(f"Stored the {provider} key of {_title(key)}, encrypted.\n{APPLIED}")
    return 0


async def _remove_provider(store: ProxyKeyStore, reactor: Any, options: Any, out: TextIO) -> int:
    provider = options["provider"]
    key = await store.get(options["proxy_key_id"])
    if not await store.remove_provider(key.id, provider):
        raise NothingToRemove(f"{_title(key)} has no {provider} key")
    out.write(
        f"Removed the {provider} key of {_title(key)}: its {provider} requests now get 401.\n"
        + APPLIED
    )
    return 0


async def _list(store: ProxyKeyStore, reactor: Any, options: Any, out: TextIO) -> int:
    keys = await store.list(options["majordomo-key-id"])
    if not keys:
        out.write(
            "No proxy keys yet. Create one with: "
            "majordomo proxy-keys create --name NAME --majordomo-key-id ID\n"
        )
        return 0
    rows = [("ID", "NAME", "MAJORDOMO KEY", "STATUS", "REQUESTS", "LAST USED", "CREATED")]
    for key in keys:
        rows.append(
            (
                str(key.id),
                printable(key.name),
                str(key.majordomo_api_key_id),
                _status(key),
                str(key.request_count),
                format_time(key.last_used_at),
                format_time(key.created_at),
            )
        )
    write_columns(rows, out, numbers=range(4, 5))
    return 0


def _write_providers(mappings: list[ProviderMapping], out: TextIO) -> None:
    rows = [("PROVIDER", "ENCRYPTED WITH", "SET", "UPDATED")]
    for mapping in mappings:
        rows.append(
            (
                mapping.provider,
                mapping.key_fingerprint,
                format_time(mapping.created_at),
                format_time(mapping.updated_at),
            )
        )
    write_columns(rows, out)


async def _get(store: ProxyKeyStore, reactor: Any, options: Any, out: TextIO) -> int:
    key = await store.get(options["proxy_key_id"])
    mappings = await store.list_providers(key.id)
    out.write(
        f"  ID:            {key.id}\n"
        f"  Name:          {printable(key.name)}\n"
        f"  Description:   {printable(key.description or '')}\n"
        f"  Majordomo key: {key.majordomo_api_key_id}\n"
        f"  Status:        {_status(key)}\n"
        f"  Providers:     {', '.join(m.provider for m in mappings) or 'none'}\n"
        f"  Requests:      {key.request_count}\n"
        f"  Last used:     {format_time(key.last_used_at)}\n"
        f"  Created:       {format_time(key.created_at)}\n"
    )
    if key.revoked_at:
        out.write(f"  Revoked:       {format_time(key.revoked_at)}\n")
    return 0


async def _list_providers(store: ProxyKeyStore, reactor: Any, options: Any, out: TextIO) -> int:
    key = await store.get(options["proxy_key_id"])
    mappings = await store.list_providers(key.id)
    if not mappings:
        out.write(
            f"{_title(key, 'Proxy key')} has no provider keys. Add one with: "
            f"majordomo proxy-keys set-provider {key.id} --provider openai\n"
        )
        return 0
    _write_providers(mappings, out)
    out.write(
        "\nENCRYPTED WITH: the fingerprint of the encryption key that sealed it "
        "(the provider key itself is never shown).\n"
    )
    return 0


async def _revoke(store: ProxyKeyStore, reactor: Any, options: Any, out: TextIO) -> int:
    key = await store.revoke(options["proxy_key_id"])
    out.write(f"{_title(key, 'Proxy key')} revoked. Requests using it now get 401.\n{APPLIED}")
    return 0


_COMMANDS = {
    "create": _create,
    "set-provider": _set_provider,
    "remove-provider": _remove_provider,
    "list": _list,
    "get": _get,
    "list-providers": _list_providers,
    "revoke": _revoke,
}


async def proxy_keys_command(
    reactor: Any, config: Config, options: Any, out: TextIO, err: TextIO
) -> int:
    """C{majordomo proxy-keys SUBCOMMAND}: one operation on its own connection."""
    try:
        box = configured_box(config.secrets)
        if options.subCommand == "set-provider" and box is None:
            err.write(NO_ENCRYPTION_KEY)
            return 1
        previous = previous_boxes(config.secrets)
    except VaultError as e:
        err.write(f"majordomo: {e}\n")
        return 1
    db = Database(config.storage.postgres, reactor=reactor, pool_size=1)
    try:
        await db.connect_once()
        store = ProxyKeyStore(db, box, previous)
        return await _COMMANDS[options.subCommand](store, reactor, options.subOptions, out)
    except ProxyKeyNotFound:
        err.write(
            f"majordomo: no proxy key with id {printable(options.subOptions['proxy_key_id'])}\n"
        )
        return 1
    except (SecretInputError, ProviderError, VaultError, NothingToRemove) as e:
        err.write(f"majordomo: {e}\n")
        return 1
    finally:
        db.close()
