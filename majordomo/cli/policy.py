# -*- test-case-name: tests.test_policy_cli -*-
"""
C{majordomo keys policy set|show|clear}: a key's budget, model rules and rate
limits, and how much of each window is spent, reserved and left.

The rules are read and written by L{PolicyStore}, whose change NOTIFYs the
key channel, so running gateways apply it within a second.  Money is a
C{Decimal} from end to end and printed exactly (C{$12.50}, C{$0.00027}).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TextIO

from twisted.python import usage

from majordomo.cli.columns import write_columns
from majordomo.cli.options import CommandOptions
from majordomo.db import Database
from majordomo.db.keys import ApiKey, KeyStore
from majordomo.logtext import printable
from majordomo.metadata import PREFIX, MetadataError, metadata_name
from majordomo.policy.rules import (
    NO_BUCKET,
    PERIODS,
    Policy,
    PolicyError,
    parse_patterns,
    window_at,
)
from majordomo.policy.store import PolicyStore, WindowUse, parse_budget, parse_rate

APPLIED = "Running gateways apply it within a second.\n"
_CENT = Decimal("0.01")


def money(amount: Decimal) -> str:
    """C{$12.50}, C{$0.00027}, C{-$0.10}: at least cents, every digit the amount has."""
    value = amount.normalize()
    if value.as_tuple().exponent > -2:  # type: ignore[operator]
        value = value.quantize(_CENT)
    sign = "-" if value < 0 else ""
    return f"{sign}${format(abs(value), 'f')}"


def per_name(text: str) -> str:
    """The canonical metadata name C{--per} gives (C{user-id} or C{X-Majordomo-User-Id})."""
    name = text.strip()
    if name.lower().startswith(PREFIX):
        name = name[len(PREFIX) :]
    try:
        return metadata_name(name)
    except MetadataError as e:
        raise usage.UsageError(f"--per: {e}") from None


class _PolicyKeyOptions(CommandOptions):
    synopsis = "KEY_ID"

    def parseArgs(self, key_id: str) -> None:  # type: ignore[override]
        self["key_id"] = key_id


class PolicySetOptions(_PolicyKeyOptions):
    synopsis = (
        "KEY_ID [--budget USD --period day|week|month|total] [--per METADATA_NAME] "
        "[--models PATTERNS] [--deny-models PATTERNS] [--rpm N] [--tpm N] "
        "[--allow-unpriced|--deny-unpriced]"
    )
    longdesc = (
        "Set some of a key's rules; the others stay as they are. Periods are calendar "
        "windows in UTC. PATTERNS are comma-separated globs matched against the "
        "requested model (gpt-4o*,claude-*-haiku-*). --per NAME applies the budget and "
        "the rate limits to each value of X-Majordomo-NAME."
    )
    optParameters = CommandOptions.optParameters + [
        ["budget", None, None, "Spend limit in USD per period (e.g. 50 or 12.50)."],
        ["period", None, None, "day, week, month or total (UTC calendar windows)."],
        ["per", None, None, "A metadata name (User-Id): one budget and rate per value."],
        ["models", None, None, "Only these models (comma-separated globs)."],
        ["deny-models", None, None, "Never these models (comma-separated globs)."],
        ["rpm", None, None, "At most N requests per minute."],
        ["tpm", None, None, "At most N tokens per minute."],
    ]
    optFlags = [
        ["allow-unpriced", None, "Let a budgeted key call models with no price."],
        ["deny-unpriced", None, "Refuse models with no price on a budgeted key (default)."],
    ]

    def postOptions(self) -> None:
        if self["allow-unpriced"] and self["deny-unpriced"]:
            raise usage.UsageError("give --allow-unpriced or --deny-unpriced, not both")
        try:
            self["changes"] = self._changes()
        except PolicyError as e:
            raise usage.UsageError(str(e)) from None
        if not self["changes"]:
            raise usage.UsageError("keys policy set needs at least one rule to set")

    def _changes(self) -> dict[str, Any]:
        """The Policy fields the command line sets, parsed and checked."""
        changes: dict[str, Any] = {}
        if self["budget"] is not None:
            changes["budget_usd"] = parse_budget(self["budget"])
        if self["period"] is not None:
            if self["period"] not in PERIODS:
                raise PolicyError(f"--period must be one of {', '.join(PERIODS)}")
            changes["budget_period"] = self["period"]
        if self["per"] is not None:
            changes["per_metadata"] = per_name(self["per"])
        if self["models"] is not None:
            changes["allow_models"] = parse_patterns(self["models"])
        if self["deny-models"] is not None:
            changes["deny_models"] = parse_patterns(self["deny-models"])
        for rate in ("rpm", "tpm"):
            if self[rate] is not None:
                changes[rate] = parse_rate(rate, self[rate])
        if self["allow-unpriced"] or self["deny-unpriced"]:
            changes["allow_unpriced"] = bool(self["allow-unpriced"])
        return changes


class PolicyClearOptions(_PolicyKeyOptions):
    synopsis = "KEY_ID [--budget] [--models] [--deny-models] [--rpm] [--tpm]"
    longdesc = "Clear the rules named, or every rule of the key when none is named."
    optFlags = [
        ["budget", None, "Clear the budget (and --per)."],
        ["models", None, "Clear the allowed models."],
        ["deny-models", None, "Clear the denied models."],
        ["rpm", None, "Clear the requests-per-minute limit."],
        ["tpm", None, "Clear the tokens-per-minute limit."],
    ]

    def postOptions(self) -> None:
        flags = ("budget", "models", "deny-models", "rpm", "tpm")
        self["which"] = {flag.replace("-", "_") for flag in flags if self[flag]}


class PolicyOptions(usage.Options):
    synopsis = "set|show|clear KEY_ID ..."
    subCommands = [
        ["set", None, PolicySetOptions, "Set a key's budget, model rules or rate limits."],
        ["show", None, _PolicyKeyOptions, "A key's rules and the use of its current windows."],
        ["clear", None, PolicyClearOptions, "Clear some or all of a key's rules."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("keys policy needs a subcommand: " + self.synopsis)


def _key_title(key: ApiKey) -> str:
    return f"API key {key.id} ({printable(key.name)})"


def _period_text(period: str) -> str:
    return "in total (no reset)" if period == "total" else f"per {period} (UTC)"


def describe_policy(policy: Policy, out: TextIO) -> None:
    """The rules, one line each; the limits a policy does not have say so."""
    budget = "none"
    if policy.has_budget:
        assert policy.budget_usd is not None and policy.budget_period is not None
        budget = f"{money(policy.budget_usd)} {_period_text(policy.budget_period)}"
    per = f"each X-Majordomo-{policy.per_metadata} value" if policy.per_metadata else "the key"
    lines = [
        ("Budget:", budget),
        ("Allowed models:", ", ".join(policy.allow_models) or "any"),
        ("Denied models:", ", ".join(policy.deny_models) or "none"),
        ("Requests/minute:", str(policy.rpm) if policy.rpm else "no limit"),
        ("Tokens/minute:", str(policy.tpm) if policy.tpm else "no limit"),
    ]
    if policy.has_budget:
        unpriced = "allowed (not counted)" if policy.allow_unpriced else "refused"
        lines.insert(1, ("Unpriced models:", unpriced))
    if policy.has_budget or policy.rpm or policy.tpm:
        lines.append(("Limits apply to:", per))
    for label, value in lines:
        out.write(f"  {label:<17}{value}\n")


def bucket_label(per_metadata: str | None, bucket: str) -> str:
    """A bucket as a person reads it: the metadata value (escaped), or what it stands for."""
    if per_metadata is None:
        return "(whole key)"
    if bucket == NO_BUCKET:
        return f"(no X-Majordomo-{per_metadata})"
    return printable(bucket)


def _window_text(use: WindowUse) -> str:
    if use.window.end is None:
        return "all time"
    start = use.window.start.strftime("%Y-%m-%d %H:%M:%S")
    return f"{start} to {use.window.end.strftime('%Y-%m-%d %H:%M:%S')} UTC"


def _uses_of(kind: str, uses: Sequence[WindowUse], now: datetime) -> list[WindowUse]:
    """The kind's buckets; one empty use of the key's bucket when nothing counted yet."""
    found = [use for use in uses if use.kind == kind]
    return found or [WindowUse(NO_BUCKET, kind, window_at(kind, now), Decimal(0), Decimal(0))]


def describe_windows(policy: Policy, uses: Sequence[WindowUse], now: datetime, out: TextIO) -> None:
    """Per current window: each bucket's spend (or requests/tokens held) and what is left."""
    if policy.has_budget:
        assert policy.budget_usd is not None and policy.budget_period is not None
        budget_uses = _uses_of(policy.budget_period, uses, now)
        out.write(f"\nBudget window ({policy.budget_period}): {_window_text(budget_uses[0])}\n")
        rows = [("  BUCKET", "SPENT", "RESERVED", "REMAINING")]
        for use in budget_uses:
            left = policy.budget_usd - use.spent - use.reserved
            rows.append(
                (
                    "  " + bucket_label(policy.per_metadata, use.bucket),
                    money(use.spent),
                    money(use.reserved),
                    money(left),
                )
            )
        write_columns(rows, out, numbers=range(1, 4))
    for kind, limit, unit in (("rpm", policy.rpm, "requests"), ("tpm", policy.tpm, "tokens")):
        if not limit:
            continue
        rate_uses = _uses_of(kind, uses, now)
        out.write(f"\nThis minute ({unit}, limit {limit}): {_window_text(rate_uses[0])}\n")
        rate_rows = [("  BUCKET", "HELD", "REMAINING")]
        for use in rate_uses:
            held = use.reserved.to_integral_value()
            label = "  " + bucket_label(policy.per_metadata, use.bucket)
            rate_rows.append((label, str(held), str(limit - held)))
        write_columns(rate_rows, out, numbers=range(1, 3))
    out.write(
        "\nSPENT: the cost of the window's recorded requests.  RESERVED, HELD: what running\n"
        "gateways hold of the limit now, for requests in flight and the next few.\n"
    )


async def _policy_set(db: Database, options: Any, out: TextIO) -> int:
    key = await KeyStore(db).get(options["key_id"])
    policy = await PolicyStore(db).change(key.id, options["changes"])
    out.write(f"Policy of {_key_title(key)} set:\n\n")
    describe_policy(policy, out)
    if "allow_unpriced" in options["changes"] and not policy.has_budget:
        out.write("\nNote: unpriced models are refused only on a key with a budget.\n")
    out.write("\n" + APPLIED)
    return 0


async def _policy_show(db: Database, options: Any, out: TextIO) -> int:
    key = await KeyStore(db).get(options["key_id"])
    store = PolicyStore(db)
    policy = await store.get(key.id)
    if policy.is_empty:
        out.write(f"{_key_title(key)} has no policy: no budget, model rules or rate limits.\n")
        return 0
    now = datetime.now(UTC)
    uses = await store.use(key.id, policy, now)
    out.write(f"Policy of {_key_title(key)}:\n\n")
    describe_policy(policy, out)
    describe_windows(policy, uses, now, out)
    return 0


async def _policy_clear(db: Database, options: Any, out: TextIO) -> int:
    key = await KeyStore(db).get(options["key_id"])
    policy = await PolicyStore(db).clear(key.id, options["which"])
    cleared = ", ".join(sorted(options["which"])) if options["which"] else "every rule"
    out.write(f"Cleared {cleared.replace('_', '-')} of {_key_title(key)}.\n")
    if policy.is_empty:
        out.write("It has no policy now: no budget, model rules or rate limits.\n")
    else:
        out.write("What remains:\n\n")
        describe_policy(policy, out)
    out.write("\n" + APPLIED)
    return 0


_POLICY_COMMANDS = {"set": _policy_set, "show": _policy_show, "clear": _policy_clear}


async def policy_command(db: Database, options: Any, out: TextIO) -> int:
    """C{majordomo keys policy SUBCOMMAND} on a connected database."""
    try:
        return await _POLICY_COMMANDS[options.subCommand](db, options.subOptions, out)
    except PolicyError as e:  # the change does not fit the key's current policy
        raise usage.UsageError(str(e)) from None
