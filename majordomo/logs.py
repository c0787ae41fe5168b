# -*- test-case-name: tests.test_cli -*-
"""
Log output for C{majordomo serve} in a terminal: the gateway's own messages
as plain lines ("Starting Majordomo Gateway on 127.0.0.1:7680"), warnings and
errors from anywhere with their level.  C{twistd majordomo} keeps twistd's
usual timestamped log.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    LogLevel,
    PredicateResult,
    eventAsText,
)
from zope.interface import implementer

# Set by `majordomo serve --workers N` in each worker's environment.
WORKER_ENV = "MAJORDOMO_WORKER"


# A format that is one whole field, as in Twisted's own "{log_io}": the gateway
# logs its per-request line this way, already made.
_ONE_FIELD = re.compile(r"\{(\w+)\}")


def _message(event: dict[str, Any]) -> str:
    """
    The event's text.  A one-field format naming a string is that string
    (what twisted.logger's formatting would give, at half the cost of the
    whole log call: it runs once per request).
    """
    form = event.get("log_format")
    if form is not None and "log_failure" not in event:
        field = _ONE_FIELD.fullmatch(form)
        if field is not None and isinstance(value := event.get(field[1]), str):
            return value
    return eventAsText(event, includeTimestamp=False, includeSystem=False)


def _format(event: dict[str, Any]) -> str:
    text = _message(event)
    level = event.get("log_level")
    if level is not None and level >= LogLevel.warn:
        text = f"{level.name.upper()}: {text}"
    return text + "\n"


@implementer(ILogFilterPredicate)
class _OursOrImportant:
    """The gateway's own events, and anything at warning level or above."""

    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        namespace = event.get("log_namespace", "")
        level = event.get("log_level", LogLevel.info)
        if namespace.startswith("majordomo") or level >= LogLevel.warn:
            return PredicateResult.yes
        return PredicateResult.no


def _prefix() -> str:
    worker = os.environ.get(WORKER_ENV)
    return f"[worker {worker}] " if worker else ""


def console_observer() -> FilteringLogObserver:
    """The observer C{majordomo serve} passes to twistd's C{--logger}."""
    prefix = _prefix()
    return FilteringLogObserver(
        FileLogObserver(sys.stdout, lambda event: prefix + _format(event)), [_OursOrImportant()]
    )


def _json_line(event: dict[str, Any]) -> str:
    """One JSON object per line: time, level, namespace, message and the event's own fields."""
    level = event.get("log_level")
    line: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace"),
        "message": _message(event),
    }
    worker = os.environ.get(WORKER_ENV)
    if worker:
        line["worker"] = int(worker)
    for key, value in event.items():
        if not key.startswith("log_") and key not in line and not key.startswith("_"):
            line[key] = (
                value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
            )
    return json.dumps(line) + "\n"


def json_observer() -> FilteringLogObserver:
    """C{majordomo serve --log-format json} (or C{twistd --logger majordomo.logs.json_observer})."""
    return FilteringLogObserver(FileLogObserver(sys.stdout, _json_line), [_OursOrImportant()])
