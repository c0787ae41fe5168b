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

# Leases are asked for in chunks of this fraction of the limit, or what the request needs.
CHUNK = Decimal("0.02")
ONE, ZERO = Decimal(1), Decimal(0)
# Policies and, per policy, requested models whose admission facts are kept worked out.
PLANNED_POLICIES = 10_000
PLANNED_MODELS = 1_000


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


class _Plan:
    """
    What admission needs of one policy, worked out once: policies are cached
    with their keys, so the same object comes back request after request.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.budget_chunk = (policy.budget_usd or Decimal(0)) * CHUNK
        self.rpm = Decimal(policy.rpm or 0)
        self.rpm_chunk = _rate_chunk(policy.rpm or 0)
        self.tpm = Decimal(policy.tpm or 0)
        self.tpm_chunk = _rate_chunk(policy.tpm or 0)
        self._models: dict[str | None, str | None] = {}

    def model_refusal(self, model: str | None) -> str | None:
        if model not in self._models:
            if len(self._models) >= PLANNED_MODELS:
                self._models.clear()
            self._models[model] = self.policy.model_refusal(model)
        return self._models[model]


class _Windows:
    """The current window of each kind, recomputed only when one ends."""

    def __init__(self) -> None:
        self._current: dict[str, tuple[float, float, Window]] = {}

    def at(self, kind: str, moment: float) -> Window:
        known = self._current.get(kind)
        if known is not None and known[0] <= moment < known[1]:
            return known[2]
        window = window_at(kind, datetime.fromtimestamp(moment, UTC))
        end = window.end.timestamp() if window.end is not None else math.inf
        self._current[kind] = (window.start.timestamp(), end, window)
        return window


class PolicyGate:
    """Admits requests against their keys' policies, from this process's leases."""

    def __init__(self, leases: LeaseBook, prices: PriceSource, when_unavailable: str) -> None:
        self._leases = leases
        self._prices = prices
        self._deny_when_unavailable = when_unavailable == "deny"
        self._plans: dict[int, _Plan] = {}
        self._windows = _Windows()

    def _plan(self, policy: Policy) -> _Plan:
        plan = self._plans.get(id(policy))
        if plan is None or plan.policy is not policy:
            if len(self._plans) >= PLANNED_POLICIES:
                self._plans.clear()
            plan = self._plans[id(policy)] = _Plan(policy)
        return plan

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
        plan = self._plan(policy)
        refused = plan.model_refusal(model)
        if refused is not None:
            raise PolicyRefusal(403, "model_not_allowed", f"Model not allowed: {refused}")
        bucket = policy.bucket(raw_metadata)
        allowance = Allowance(self._leases)
        try:
            if policy.has_budget:
                await self._reserve_budget(
                    allowance, key_id, plan, bucket, arrived, provider, model, body_size, fields
                )
            if policy.rpm:
                await self._take_rate(key_id, "rpm", plan, bucket, arrived)
            if policy.tpm:
                allowance.hold_tokens(await self._take_rate(key_id, "tpm", plan, bucket, arrived))
        except BaseException:
            allowance.end(Decimal(0), ERROR_NOT_BILLED, 0)
            raise
        return allowance

    async def _reserve_budget(
        self,
        allowance: Allowance,
        key_id: str,
        plan: _Plan,
        bucket: str,
        now: float,
        provider: str,
        model: str | None,
        body_size: int,
        fields: dict[str, Any] | None,
    ) -> None:
        policy = plan.policy
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
        window = self._windows.at(policy.budget_period, now)
        held = self._leases.holding(
            WindowId(key_id, bucket, window.kind, window.start), policy.budget_usd
        )
        chunk = max(estimate.cost, plan.budget_chunk)
        if not await self._take(held, estimate.cost, estimate.cost, chunk):
            raise PolicyRefusal(
                429,
                "budget_exceeded",
                f"Budget exceeded: {_budget_name(policy, bucket)} of "
                f"${policy.budget_usd} cannot cover this request (up to ${estimate.cost:.6f})",
                _retry_after(window, now),
            )
        allowance.hold_budget(held, estimate.cost)

    async def _take_rate(
        self, key_id: str, kind: str, plan: _Plan, bucket: str, now: float
    ) -> Holding:
        """
        rpm: one request, taken now; tpm: room for at least one token (what
        the request uses is taken when it ends).  Refused: rate_limit_exceeded.
        """
        limit, chunk = (plan.rpm, plan.rpm_chunk) if kind == "rpm" else (plan.tpm, plan.tpm_chunk)
        amount = ONE if kind == "rpm" else ZERO
        window = self._windows.at(kind, now)
        held = self._leases.holding(WindowId(key_id, bucket, kind, window.start), limit)
        if not await self._take(held, amount, ONE, chunk):
            what = "requests" if kind == "rpm" else "tokens"
            raise PolicyRefusal(
                429,
                "rate_limit_exceeded",
                f"Rate limit exceeded: {limit} {what} per minute{_bucket_note(bucket)}",
                _retry_after(window, now),
            )
        if kind == "rpm":
            self._leases.release(held, ONE, ONE)  # a request is used as soon as it is let in
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


def _retry_after(window: Window, now: float) -> int | None:
    if window.end is None:
        return None
    return max(1, math.ceil(window.end.timestamp() - now))


def _bucket_note(bucket: str) -> str:
    return f" for {bucket!r}" if bucket else ""


def _budget_name(policy: Policy, bucket: str) -> str:
    period = {"day": "daily", "week": "weekly", "month": "monthly", "total": "total"}
    name = f"this key's {period[policy.budget_period or 'total']} budget"
    if policy.per_metadata:
        shown = repr(bucket) if bucket else "requests without it"
        name += f" per {policy.per_metadata} ({shown})"
    return name
