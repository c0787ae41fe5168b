# -*- test-case-name: tests.test_gateway,tests.test_hostile_requests -*-
"""
What the gateway logs about the requests it forwards: one line per request
(what it was, what it used, what it cost; no secrets, caller text escaped),
and a warning for each model it could not price, for a bounded number of
models.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.logger import Logger

from majordomo.logtext import printable

log = Logger()

# Distinct (provider, model) pairs warned about as having no price; the
# counts that matter are in /metrics.  Model names are cut to this length.
MAX_UNPRICED_MODELS = 1000
_UNPRICED_NAME_LIMIT = 200
# Characters of a path kept in a log line.
_LOGGED_PATH_LIMIT = 500


def log_request(row: dict[str, Any]) -> None:
    """
    One line per request: what it was, what it used, what it cost.  No secrets.

    The text is made here with an f-string: twisted.logger's format-string
    machinery took 4% of the gateway's CPU for this line.  The fields stay on
    the event for JSON logs.
    """
    fields = {field: row.get(field) for field in _LOGGED_FIELDS}
    for field in _CALLER_TEXT_FIELDS:
        if isinstance(fields[field], str):
            fields[field] = printable(fields[field], _LOGGED_PATH_LIMIT)
    line = (
        f"{fields['method']} {fields['path']} {row['status_code']} {fields['model']} "
        f"in={row.get('input_tokens')} out={row.get('output_tokens')} "
        f"cost={row.get('total_cost')} {row['duration_ms']:.0f}ms"
    )
    log.info("{request_line}", request_line=line, **fields)


_LOGGED_FIELDS = (
    "id",
    "method",
    "path",
    "provider",
    "status_code",
    "model",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "total_cost",
    "usage_status",
    "duration_ms",
    "ttfb_ms",
)
# Logged fields that hold caller or provider text.
_CALLER_TEXT_FIELDS = ("method", "path", "model")


class UnpricedModels:
    """The requests whose model had no price, by (provider, model): their cost is NULL."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def note(self, provider: str, model: str) -> None:
        """
        Count a request we could not price; warn on the first of each model,
        for the first L{MAX_UNPRICED_MODELS} models (names are the caller's
        or the provider's choice: the set must not grow without end).
        """
        name = model[:_UNPRICED_NAME_LIMIT]
        if (provider, name) not in self.counts:
            if len(self.counts) >= MAX_UNPRICED_MODELS:
                return
            log.warn(
                "No price for model {model} on {provider}: its cost is recorded as NULL "
                "(add it to pricing.overrides_file, then run majordomo reprice)",
                model=printable(model, _UNPRICED_NAME_LIMIT),
                provider=provider,
            )
            if len(self.counts) == MAX_UNPRICED_MODELS - 1:
                log.warn(
                    "{count} models have no price; not warning about more (see /metrics)",
                    count=MAX_UNPRICED_MODELS,
                )
        self.counts[provider, name] += 1
