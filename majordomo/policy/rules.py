# -*- test-case-name: tests.test_policy_rules -*-
"""
What a key's policy says, and the calendar windows its limits count in.

A L{Policy} is read with the key (L{majordomo.db.keys.KeyStore.find_active})
and cached with it, so a change reaches every gateway through the key
cache's NOTIFY.  Windows are calendar windows in UTC, computed here exactly
as PostgreSQL's C{majordomo_window_start} computes them for the rows.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

PERIODS = ("day", "week", "month", "total")
RATE_KINDS = ("rpm", "tpm")
# The bucket of requests without the --per metadata header (or of a key without --per).
NO_BUCKET = ""
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Patterns longer than this, or more of them, are refused when set.
MAX_PATTERNS = 100
MAX_PATTERN_LENGTH = 200


class PolicyError(ValueError):
    """A policy that cannot be set; the message says why."""


@dataclass(frozen=True)
class Policy:
    """One key's rules.  Every limit is optional."""

    budget_usd: Decimal | None = None
    budget_period: str | None = None
    per_metadata: str | None = None  # canonical metadata name, e.g. "User-Id"
    allow_models: tuple[str, ...] = ()
    deny_models: tuple[str, ...] = ()
    allow_unpriced: bool = False
    rpm: int | None = None
    tpm: int | None = None

    @property
    def has_budget(self) -> bool:
        return self.budget_usd is not None and self.budget_period is not None

    @property
    def has_model_rules(self) -> bool:
        return bool(self.allow_models or self.deny_models)

    @property
    def is_empty(self) -> bool:
        """True if the policy says nothing (no row is kept for it)."""
        return not (
            self.has_budget or self.has_model_rules or self.rpm or self.tpm or self.allow_unpriced
        )

    def model_refusal(self, model: str | None) -> str | None:
        """
        Why C{model} is not allowed, or None if it is.  Patterns match the
        requested model case-insensitively (a deny rule must not be dodged by
        spelling); a request naming no model is refused when there are rules.
        """
        if not self.has_model_rules:
            return None
        if not model:
            return "the request names no model, and this key has model rules"
        name = model.lower()
        for pattern in self.deny_models:
            if fnmatch.fnmatchcase(name, pattern.lower()):
                return f"model {model!r} is denied for this key ({pattern})"
        if self.allow_models and not any(
            fnmatch.fnmatchcase(name, pattern.lower()) for pattern in self.allow_models
        ):
            return f"model {model!r} is not among this key's allowed models"
        return None

    def bucket(self, raw_metadata: dict[str, str]) -> str:
        """Which bucket a request with this metadata counts in."""
        if self.per_metadata is None:
            return NO_BUCKET
        return raw_metadata.get(self.per_metadata, NO_BUCKET)


# The columns of key_policies, in Policy's field order.
POLICY_COLUMNS = (
    "budget_usd, budget_period, per_metadata, allow_models, deny_models, allow_unpriced, rpm, tpm"
)


def policy_from_row(row: Any) -> Policy:
    """A Policy from the POLICY_COLUMNS of a key_policies row."""
    budget, period, per, allow, deny, unpriced, rpm, tpm = row
    return Policy(
        budget_usd=Decimal(budget) if budget is not None else None,
        budget_period=period,
        per_metadata=per,
        allow_models=tuple(allow or ()),
        deny_models=tuple(deny or ()),
        allow_unpriced=bool(unpriced),
        rpm=rpm,
        tpm=tpm,
    )


def parse_patterns(text: str) -> tuple[str, ...]:
    """C{"gpt-4o*, claude-*-haiku-*"} -> the patterns; refused when empty or unbounded."""
    patterns = tuple(p.strip() for p in text.split(",") if p.strip())
    if not patterns:
        raise PolicyError("give at least one model pattern")
    if len(patterns) > MAX_PATTERNS:
        raise PolicyError(f"at most {MAX_PATTERNS} model patterns")
    for pattern in patterns:
        if len(pattern) > MAX_PATTERN_LENGTH or not pattern.isprintable():
            raise PolicyError(f"not a model pattern: {pattern[:40]!r}")
    return patterns


@dataclass(frozen=True)
class Window:
    """One calendar window of a limit: C{kind} is a budget period or a rate kind."""

    kind: str
    start: datetime
    end: datetime | None  # None for "total"

    def seconds_left(self, now: datetime) -> float:
        return 0.0 if self.end is None else max(0.0, (self.end - now).total_seconds())


def window_at(kind: str, now: datetime) -> Window:
    """The window of C{kind} that C{now} (aware) falls in; as SQL's majordomo_window_start."""
    now = now.astimezone(UTC)
    if kind == "total":
        return Window(kind, EPOCH, None)
    if kind in RATE_KINDS:
        start = now.replace(second=0, microsecond=0)
        return Window(kind, start, start + timedelta(minutes=1))
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "day":
        return Window(kind, day, day + timedelta(days=1))
    if kind == "week":
        start = day - timedelta(days=day.weekday())
        return Window(kind, start, start + timedelta(days=7))
    if kind == "month":
        start = day.replace(day=1)
        following = (start + timedelta(days=32)).replace(day=1)
        return Window(kind, start, following)
    raise PolicyError(f"unknown period {kind!r}")
