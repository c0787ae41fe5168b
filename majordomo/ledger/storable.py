# -*- test-case-name: tests.test_storable -*-
"""
Rows PostgreSQL stores, whoever chose their values.

A row of C{llm_requests} carries strings the caller chose (the model asked
for, the path, metadata), strings and numbers the provider chose (the model
it reports, its service tier, its whole usage object) and numbers the gateway
computed from them.  PostgreSQL refuses some values: C{text} cannot hold NUL,
C{jsonb} refuses the escapes of NUL and of lone surrogates, JSON has no NaN
or Infinity, a C{bigint} ends at 2**63-1.  One such value would keep the
whole row out, and the request out of its key's C{request_count}.  So
L{row} makes every value storable before the row is journaled: NUL and lone
surrogates become U+FFFD in every string (keys of objects included),
non-finite floats become null, and token counts that cannot be true make the
row's usage C{invalid_usage} with NULL counts and no cost.

A row PostgreSQL refuses all the same, for a reason no check here foresaw (a
constraint or a type this module does not know of), is stored as
L{reduced_row}: only the facts the gateway itself produced, so the request
still has its row and its count.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from majordomo.ledger.record import TOKEN_COLUMNS
from majordomo.usage import INVALID_USAGE, UNKNOWN, is_count

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# Objects nested deeper than this (no usage object comes close) are cut to
# null, so that encoding them can never hit the recursion limit.
MAX_DEPTH = 32
# Integers longer than this cannot even be written out as JSON (Python's
# int-to-str digit limit); jsonb would take them, but no usage needs them.
_MAX_INT_BITS = 13_000

_INTEGER_COLUMNS = ("status_code",)
_FLOAT_COLUMNS = ("ttfb_ms", "duration_ms")
_COST_COLUMNS = ("input_cost", "output_cost", "total_cost")
_INT32 = range(-(2**31), 2**31)

# What a reduced row may keep of a provider name and a method.
_PROVIDER = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_METHOD = re.compile(r"[A-Z]{1,16}")


def text(value: str) -> str:
    """C{value} with NUL and lone surrogates replaced by U+FFFD (itself if it has none)."""
    if "\x00" not in value:
        if value.isascii():  # (a flag of the string, no scan) ASCII holds no surrogate
            return value
        try:
            value.encode("utf-8")  # fails exactly on surrogates, several times faster than a regex
        except UnicodeEncodeError:
            pass
        else:
            return value
    return _UNSTORABLE.sub(REPLACEMENT, value)


def value(item: Any, depth: int = 0) -> Any:
    """
    A column value or JSON value, storable: strings cleaned (L{text}),
    floats that are not finite and integers too long to write out as null,
    objects and arrays cleaned all through, down to L{MAX_DEPTH}.
    """
    kind = type(item)
    if kind is str:
        return text(item)
    if item is None or kind is bool:
        return item
    if kind is int:
        return item if item.bit_length() <= _MAX_INT_BITS else None
    if kind is float:
        return item if math.isfinite(item) else None
    if kind is dict:
        if depth >= MAX_DEPTH:
            return None
        return {_key(key): value(member, depth + 1) for key, member in item.items()}
    if kind is list or kind is tuple:
        if depth >= MAX_DEPTH:
            return None
        return [value(member, depth + 1) for member in item]
    if kind is Decimal:
        return item if item.is_finite() else None
    return _other(item, depth)


def _other(item: Any, depth: int) -> Any:
    """Subclasses of those types are read as the type itself; anything else as its text."""
    for base in (str, int, float, Decimal):
        if isinstance(item, base):
            return value(base(item), depth)
    if isinstance(item, dict):
        return value(dict(item), depth)
    if isinstance(item, list | tuple):
        return value(list(item), depth)
    return text(str(item))


def _key(key: Any) -> str:
    return text(key if isinstance(key, str) else str(key))


def row(record: dict[str, Any]) -> dict[str, Any]:
    """
    A copy of C{record} (a row of column values) that PostgreSQL can store.
    Beyond L{value}: a token count that is not a whole number in bigint's
    range and not negative makes every count NULL, the usage
    C{invalid_usage} and the cost unknown (never 0 and C{complete}); a
    status or a duration its column cannot hold is NULL.
    """
    cleaned = {_key(column): value(item) for column, item in record.items()}
    # (Judged on the values as given: value() nulls integers too long to write.)
    if not all(record.get(column) is None or is_count(record[column]) for column in TOKEN_COLUMNS):
        cleaned.update(dict.fromkeys(TOKEN_COLUMNS))
        cleaned.update(dict.fromkeys(_COST_COLUMNS))
        cleaned["usage_status"] = INVALID_USAGE
    for column in _INTEGER_COLUMNS:
        if column in cleaned and not _is_int32(cleaned[column]):
            cleaned[column] = None
    for column in _FLOAT_COLUMNS:
        if column in cleaned and not _is_double(cleaned[column]):
            cleaned[column] = None
    return cleaned


def _is_int32(item: Any) -> bool:
    return item is None or (type(item) is int and item in _INT32)


def _is_double(item: Any) -> bool:
    if item is None:
        return True
    if isinstance(item, bool) or not isinstance(item, int | float):
        return False
    try:
        return math.isfinite(float(item))
    except OverflowError:
        return False


def reduced_row(record: Any, reason: str) -> dict[str, Any] | None:
    """
    The row to store for C{record} (as read back from the journal) when
    PostgreSQL refused it whole: its id, arrival and response times, key,
    provider, method and status, nothing the caller or the provider chose
    (an empty path, no model, no metadata, unknown usage), and C{reason} as
    its error message.  What it counted against its key's budget is kept
    too, so the budget's spent still agrees with the rows, and so is the
    proxy key whose provider key it used, so the proxy key's
    C{request_count} and usage reports agree with the rows too.  None if
    even the id or the arrival time is not one.
    """
    if not isinstance(record, dict):
        return None
    request_id = _uuid(record.get("id"))
    created_at = _timestamp(record.get("created_at"))
    if request_id is None or created_at is None:
        return None
    provider = record.get("provider")
    method = record.get("method")
    status = record.get("status_code")
    return {
        "id": request_id,
        "created_at": created_at,
        "responded_at": _timestamp(record.get("responded_at")),
        "majordomo_api_key_id": _uuid(record.get("majordomo_api_key_id")),
        "proxy_key_id": _uuid(record.get("proxy_key_id")),
        "provider": provider if _matches(_PROVIDER, provider) else "unknown",
        "method": method if _matches(_METHOD, method) else "OTHER",
        "path": "",
        "stream": record.get("stream") is True,
        "status_code": status if type(status) is int and 100 <= status <= 999 else None,
        "error_message": reason,
        "usage_status": UNKNOWN,
        "raw_metadata": {},
        "indexed_metadata": {},
        "budget_cost": _amount(record.get("budget_cost")),
        "lease_holder": _uuid(record.get("lease_holder")),
    }


def refusal(error: Exception) -> str:
    """
    Why PostgreSQL refused a row, in words that hold none of the row's
    values: the SQLSTATE and the name of its error class.
    """
    code = getattr(error, "pgcode", None)
    name = type(error).__name__
    return f"SQLSTATE {code}, {name}" if isinstance(code, str) else name


def _matches(pattern: re.Pattern[str], item: Any) -> bool:
    return isinstance(item, str) and pattern.fullmatch(item) is not None


def _uuid(item: Any) -> str | None:
    if not isinstance(item, str):
        return None
    try:
        return str(uuid.UUID(item))
    except ValueError:
        return None


def _amount(item: Any) -> str | None:
    """A non-negative finite decimal amount, as text; None if it is not one."""
    if not isinstance(item, str):
        return None
    try:
        amount = Decimal(item)
    except ArithmeticError:
        return None
    return item if amount.is_finite() and amount >= 0 else None


def _timestamp(item: Any) -> str | None:
    """An ISO 8601 time with its zone, as the row has it; None if it is not one."""
    if not isinstance(item, str):
        return None
    try:
        moment = datetime.fromisoformat(item)
    except ValueError:
        return None
    return moment.isoformat() if moment.tzinfo is not None else None
