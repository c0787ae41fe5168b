# -*- test-case-name: tests.test_policy_store -*-
"""
Reading and changing key policies in PostgreSQL (C{majordomo keys policy}).

A change is one transaction that also NOTIFYs the key channel, so every
running gateway drops the key from its cache and reads the new policy on the
key's next request (L{majordomo.db.keycache}).

Setting a budget recomputes the current window's spent counters from
C{llm_requests} while holding a lock that makes the log writer's batch
statements wait: every row is then counted exactly once, either in that sum
(inserted before) or by its batch statement (inserted after, which sees the
policy).  From then on the batch statement keeps the counters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from twisted.internet import defer

from majordomo.db import Database
from majordomo.db.keys import KEYS_CHANNEL, KeyStore
from majordomo.metadata import MetadataError, metadata_name
from majordomo.policy.rules import (
    PERIODS,
    POLICY_COLUMNS,
    Policy,
    PolicyError,
    Window,
    policy_from_row,
    window_at,
)

# Largest budget and limits accepted: beyond any real spend, and within the column types.
MAX_BUDGET = Decimal("1000000000")
MAX_RATE = 2**31 - 1

CLEARABLE = ("budget", "models", "deny_models", "rpm", "tpm")


def parse_budget(text: str) -> Decimal:
    """C{"50"} or C{"$12.50"} -> Decimal USD; refused when not a sane amount."""
    try:
        amount = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        raise PolicyError(f"--budget must be an amount in USD, not {text[:40]!r}") from None
    if not amount.is_finite() or amount < 0 or amount > MAX_BUDGET:
        raise PolicyError(f"--budget must be between 0 and {MAX_BUDGET} USD")
    return amount


def parse_rate(name: str, value: Any) -> int:
    """A positive rate limit, or PolicyError."""
    try:
        rate = int(value)
    except (TypeError, ValueError):
        raise PolicyError(f"--{name} must be a whole number") from None
    if not 0 < rate <= MAX_RATE:
        raise PolicyError(f"--{name} must be between 1 and {MAX_RATE}")
    return rate


def changed_policy(current: Policy, changes: dict[str, Any]) -> Policy:
    """
    C{current} with the given changes (only the keys present), checked:
    a budget needs a period (kept from the current policy when not given).
    """
    policy = replace(current, **changes)
    if "per_metadata" in changes and policy.per_metadata is not None:
        try:
            policy = replace(policy, per_metadata=metadata_name(policy.per_metadata))
        except MetadataError as e:
            raise PolicyError(f"--per: {e}") from None
    if policy.budget_period is not None and policy.budget_period not in PERIODS:
        raise PolicyError(f"--period must be one of {', '.join(PERIODS)}")
    if (policy.budget_usd is None) != (policy.budget_period is None):
        raise PolicyError("a budget needs both --budget USD and --period day|week|month|total")
    return policy


@dataclass(frozen=True)
class WindowUse:
    """One bucket's use of one window: exact spend and what gateways hold now."""

    bucket: str
    kind: str
    window: Window
    spent: Decimal  # budgets: SUM(total_cost) of the window's rows
    reserved: Decimal  # the live leases of running gateways (requests or tokens for rates)


class PolicyStore:
    """Policies of keys, returning Deferreds."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, key_id: str) -> Policy:
        """The key's policy (an empty one if it has none); KeyNotFound for an unknown key."""
        return (await self._current(key_id))[1]

    async def _current(self, key_id: str) -> tuple[str, Policy]:
        """The key's id as stored, and its policy."""
        key = await KeyStore(self._db).get(key_id)
        rows = await self._db.run_query(
            f"SELECT {POLICY_COLUMNS} FROM key_policies WHERE majordomo_api_key_id = %s",
            (key.id,),
        )
        return key.id, policy_from_row(rows[0]) if rows else Policy()

    async def change(self, key_id: str, changes: dict[str, Any]) -> Policy:
        """Apply C{changes} (Policy field -> value) to the key's policy; returns the result."""
        key_id, current = await self._current(key_id)
        policy = changed_policy(current, changes)
        recount = bool({"budget_usd", "budget_period", "per_metadata"} & set(changes))
        await self._save(key_id, policy, recount=recount)
        return policy

    async def clear(self, key_id: str, which: set[str]) -> Policy:
        """Clear some rules (names from CLEARABLE), or all of them when C{which} is empty."""
        key_id, current = await self._current(key_id)
        which = which or set(CLEARABLE)
        changes: dict[str, Any] = {}
        if "budget" in which:  # with the budget goes what it lets through unpriced
            changes.update(budget_usd=None, budget_period=None, allow_unpriced=False)
        if "models" in which:
            changes["allow_models"] = ()
        if "deny_models" in which:
            changes["deny_models"] = ()
        for rate in ("rpm", "tpm"):
            if rate in which:
                changes[rate] = None
        policy = replace(current, **changes)
        if not (policy.has_budget or policy.rpm or policy.tpm):
            policy = replace(policy, per_metadata=None)
        await self._save(key_id, policy, recount=False)
        return policy

    async def _save(self, key_id: str, policy: Policy, recount: bool) -> None:
        await self._db.run_interaction(_save_policy, key_id, policy, recount)

    async def use(
        self, key_id: str, policy: Policy, now: datetime | None = None
    ) -> list[WindowUse]:
        """Each bucket's use of the policy's current windows, most spent first."""
        now = now or datetime.now(UTC)
        kinds = ([policy.budget_period] if policy.has_budget else []) + [
            kind for kind in ("rpm", "tpm") if getattr(policy, kind)
        ]
        uses: list[WindowUse] = []
        for kind in kinds:
            assert kind is not None
            window = window_at(kind, now)
            rows = await self._db.run_query(
                "SELECT bucket, spent, (SELECT coalesce(sum((l->>'a')::numeric), 0) "
                "  FROM jsonb_each(leases) AS e(h, l) "
                "  WHERE (l->>'x')::double precision >= extract(epoch FROM now())) "
                "FROM policy_windows WHERE majordomo_api_key_id = %s AND kind = %s "
                "AND window_start = %s ORDER BY spent DESC, bucket LIMIT 100",
                (key_id, kind, window.start),
            )
            uses.extend(
                WindowUse(bucket, kind, window, Decimal(spent), Decimal(reserved))
                for bucket, spent, reserved in rows
            )
        return uses


@defer.inlineCallbacks
def _save_policy(cursor: Any, key_id: str, policy: Policy, recount: bool) -> Any:
    """One transaction: write (or delete) the policy, recount spend if asked, NOTIFY."""
    if policy.is_empty:
        yield cursor.execute("DELETE FROM key_policies WHERE majordomo_api_key_id = %s", (key_id,))
    else:
        if recount and policy.has_budget:
            # Batch statements wait until this transaction ends (see the module docstring).
            yield cursor.execute("LOCK TABLE llm_requests IN SHARE ROW EXCLUSIVE MODE")
        yield cursor.execute(
            f"INSERT INTO key_policies (majordomo_api_key_id, {POLICY_COLUMNS}) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (majordomo_api_key_id) DO UPDATE SET "
            "budget_usd = excluded.budget_usd, budget_period = excluded.budget_period, "
            "per_metadata = excluded.per_metadata, allow_models = excluded.allow_models, "
            "deny_models = excluded.deny_models, allow_unpriced = excluded.allow_unpriced, "
            "rpm = excluded.rpm, tpm = excluded.tpm, updated_at = now()",
            (
                key_id,
                policy.budget_usd,
                policy.budget_period,
                policy.per_metadata,
                list(policy.allow_models) or None,
                list(policy.deny_models) or None,
                policy.allow_unpriced,
                policy.rpm,
                policy.tpm,
            ),
        )
        if recount and policy.has_budget:
            yield _recount(cursor, key_id, policy)
    yield cursor.execute("SELECT pg_notify(%s, %s)", (KEYS_CHANNEL, key_id))


@defer.inlineCallbacks
def _recount(cursor: Any, key_id: str, policy: Policy) -> Any:
    """The current window's spent, per bucket, from the rows themselves."""
    assert policy.budget_period is not None
    yield cursor.execute(
        "UPDATE policy_windows SET spent = 0 WHERE majordomo_api_key_id = %s AND kind = %s "
        "AND window_start = majordomo_window_start(%s, now())",
        (key_id, policy.budget_period, policy.budget_period),
    )
    yield cursor.execute(
        "INSERT INTO policy_windows AS w (majordomo_api_key_id, bucket, kind, window_start, spent) "
        "SELECT %s, coalesce(raw_metadata->>%s, ''), %s, majordomo_window_start(%s, now()), "
        "       coalesce(sum(coalesce(budget_cost, total_cost)), 0) "
        "FROM llm_requests WHERE majordomo_api_key_id = %s "
        "AND created_at >= majordomo_window_start(%s, now()) "
        "AND majordomo_window_start(%s, created_at) = majordomo_window_start(%s, now()) "
        "GROUP BY 2 "
        "ON CONFLICT (majordomo_api_key_id, bucket, kind, window_start) "
        "DO UPDATE SET spent = excluded.spent",
        (
            key_id,
            policy.per_metadata or "",
            policy.budget_period,
            policy.budget_period,
            key_id,
            policy.budget_period,
            policy.budget_period,
            policy.budget_period,
        ),
    )
