# -*- test-case-name: tests.test_policy_gate -*-
"""
The policy step of admission: a request is checked against its key's model
rules, then its estimated cost is reserved from the budget, then it takes a
request and a token allowance from the rate limits (in this order, each
undone if a later one refuses).  What it holds is an L{Allowance}, ended
exactly once when the request ends, with the exact cost and tokens.

Refusals (L{PolicyRefusal}) carry the status, the error code and a message
naming the rule, for the caller's provider error format and the row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from majordomo.policy.estimate import estimate_cost
from majordomo.policy.leases import Holding, LeaseBook, Unavailable, WindowId
from majordomo.policy.rules import Policy, Window, window_at
from majordomo.pricing import PriceSource
from majordomo.usage import COMPLETE, ERROR_NOT_BILLED, NOT_APPLICABLE

WHEN_UNAVAILABLE = ("allow", "deny")
# Leases are asked for in chunks of this fraction of the limit, or what the request needs.
CHUNK = Decimal("0.02")


class PolicyRefusal(Exception):
    """The policy refuses the request: C{status}, C{code}, C{message}, maybe C{retry_after}."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass
class _Taken:
    held: Holding
    reserved: Decimal


class Allowance:
    """What an admitted request holds of its key's limits, until it ends."""

    def __init__(self, leases: LeaseBook) -> None:
        self._leases = leases
        self._budget: _Taken | None = None
        self._tokens: Holding | None = None
        self._ended = False
        self._charged: Decimal | None = None

    def hold_budget(self, held: Holding, reserved: Decimal) -> None:
        """The request holds C{reserved} of C{held}'s budget share until it ends."""
        self._budget = _Taken(held, reserved)

    def hold_tokens(self, held: Holding) -> None:
        """The request's tokens are taken from C{held} when it ends."""
        self._tokens = held

    @property
    def row_fields(self) -> dict[str, Any]:
        """
        What the request's row carries: what it counted against the budget
        (C{budget_cost}) and the gateway whose lease the batch charges.
        """
        if self._budget is None or self._charged is None:
            return {}
        return {"lease_holder": self._leases.holder, "budget_cost": self._charged}

    def end(self, cost: Decimal | None, usage_status: str, tokens: int | None) -> None:
        """
        The request ended (its first end counts): what it is charged
        (L{budget_charge}) and the tokens it used replace what it reserved.
        """
        if self._ended:
            return
        self._ended = True
        if self._budget is not None:
            self._charged = budget_charge(self._budget.reserved, cost, usage_status)
            self._leases.release(self._budget.held, self._budget.reserved, self._charged)
        if self._tokens is not None:
            self._leases.release(self._tokens, Decimal(0), Decimal(tokens or 0))


class PolicyGate:
    """Admits requests against their keys' policies, from this process's leases."""

    def __init__(self, leases: LeaseBook, prices: PriceSource, when_unavailable: str) -> None:
        self._leases = leases
        self._prices = prices
        self._deny_when_unavailable = when_unavailable == "deny"

    async def admit(
        self,
        key_id: str,
        policy: Policy,
        provider: str,
        model: str | None,
        body_size: int,
        fields: dict[str, Any] | None,
        raw_metadata: dict[str, str],
        arrived: float,
    ) -> Allowance:
        """The request's allowance, or L{PolicyRefusal} naming the rule it breaks."""
        refused = policy.model_refusal(model)
        if refused is not None:
            raise PolicyRefusal(403, "model_not_allowed", f"Model not allowed: {refused}")
        now = datetime.fromtimestamp(arrived, UTC)
        bucket = policy.bucket(raw_metadata)
        allowance = Allowance(self._leases)
        try:
            if policy.has_budget:
                await self._reserve_budget(
                    allowance, key_id, policy, bucket, now, provider, model, body_size, fields
                )
            if policy.rpm:
                await self._take_request(key_id, policy.rpm, bucket, now)
            if policy.tpm:
                allowance.hold_tokens(await self._token_allowance(key_id, policy.tpm, bucket, now))
        except BaseException:
            allowance.end(Decimal(0), ERROR_NOT_BILLED, 0)
            raise
        return allowance

    async def _reserve_budget(
        self,
        allowance: Allowance,
        key_id: str,
        policy: Policy,
        bucket: str,
        now: datetime,
        provider: str,
        model: str | None,
        body_size: int,
        fields: dict[str, Any] | None,
    ) -> None:
        assert policy.budget_usd is not None and policy.budget_period is not None
        match = self._prices.book.lookup(provider, model) if model else None
        estimate = estimate_cost(
            provider, model, body_size, fields, match.price if match is not None else None
        )
        if estimate is None:
            if policy.allow_unpriced:
                return  # an unknown cost cannot be counted: the rule lets it through
            raise PolicyRefusal(
                403,
                "model_not_priced",
                f"Model not priced: {model or 'no model'!r} has no known price, and this "
                "key's budget cannot count an unknown cost",
            )
        window = window_at(policy.budget_period, now)
        held = self._leases.holding(
            WindowId(key_id, bucket, window.kind, window.start), policy.budget_usd
        )
        chunk = max(estimate.cost, policy.budget_usd * CHUNK)
        if not await self._take(held, estimate.cost, estimate.cost, chunk):
            raise PolicyRefusal(
                429,
                "budget_exceeded",
                f"Budget exceeded: {_budget_name(policy, bucket)} of "
                f"${policy.budget_usd} cannot cover this request (up to ${estimate.cost:.6f})",
                _retry_after(window, now),
            )
        allowance.hold_budget(held, estimate.cost)

    async def _take_request(self, key_id: str, rpm: int, bucket: str, now: datetime) -> None:
        window = window_at("rpm", now)
        held = self._leases.holding(WindowId(key_id, bucket, "rpm", window.start), Decimal(rpm))
        one = Decimal(1)
        if not await self._take(held, one, one, _rate_chunk(rpm)):
            raise PolicyRefusal(
                429,
                "rate_limit_exceeded",
                f"Rate limit exceeded: {rpm} requests per minute{_bucket_note(bucket)}",
                _retry_after(window, now),
            )
        self._leases.release(held, one, one)  # a request is used as soon as it is let in

    async def _token_allowance(self, key_id: str, tpm: int, bucket: str, now: datetime) -> Holding:
        window = window_at("tpm", now)
        held = self._leases.holding(WindowId(key_id, bucket, "tpm", window.start), Decimal(tpm))
        if not await self._take(held, Decimal(0), Decimal(1), _rate_chunk(tpm)):
            raise PolicyRefusal(
                429,
                "rate_limit_exceeded",
                f"Rate limit exceeded: {tpm} tokens per minute{_bucket_note(bucket)}",
                _retry_after(window, now),
            )
        return held

    async def _take(self, held: Holding, amount: Decimal, need: Decimal, chunk: Decimal) -> bool:
        try:
            return await self._leases.take(held, amount, need, chunk)
        except Unavailable:
            if self._deny_when_unavailable:
                raise PolicyRefusal(
                    503,
                    "policy_unavailable",
                    "This key's limits cannot be checked now (PostgreSQL is unreachable); "
                    "try again shortly",
                    5,
                ) from None
            held.reserved += amount  # policies.when_unavailable: allow
            return True


def budget_charge(reserved: Decimal, cost: Decimal | None, usage_status: str) -> Decimal:
    """
    What a finished request counts against its budget: its exact cost when
    its usage is complete; nothing when the provider does not bill it; and
    otherwise (a stream cut before its usage, a usage that could not be read,
    a timeout after sending) what was reserved for it, an upper bound of what
    the provider may have billed, so that hanging up early, say, is no way
    around a budget.  The row keeps it as C{budget_cost}.
    """
    if usage_status == COMPLETE and cost is not None:
        return cost
    if usage_status in (ERROR_NOT_BILLED, NOT_APPLICABLE):
        return cost or Decimal(0)
    return max(cost or Decimal(0), reserved)


def _rate_chunk(limit: int) -> Decimal:
    return Decimal(max(1, math.ceil(limit * CHUNK)))


def _retry_after(window: Window, now: datetime) -> int | None:
    if window.end is None:
        return None
    return max(1, math.ceil(window.seconds_left(now)))


def _bucket_note(bucket: str) -> str:
    return f" for {bucket!r}" if bucket else ""


def _budget_name(policy: Policy, bucket: str) -> str:
    period = {"day": "daily", "week": "weekly", "month": "monthly", "total": "total"}
    name = f"this key's {period[policy.budget_period or 'total']} budget"
    if policy.per_metadata:
        shown = repr(bucket) if bucket else "requests without it"
        name += f" per {policy.per_metadata} ({shown})"
    return name
