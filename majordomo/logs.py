# -*- test-case-name: tests.test_cli -*-
"""
Log output for C{majordomo serve} in a terminal: the gateway's own messages
as plain lines ("Starting Majordomo Gateway on 127.0.0.1:7680"), warnings and
errors from anywhere with their level.  C{twistd majordomo} keeps twistd's
usual timestamped log.
"""

from __future__ import annotations

import sys
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


def _format(event: dict[str, Any]) -> str:
    text = eventAsText(event, includeTimestamp=False, includeSystem=False)
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


def console_observer() -> FilteringLogObserver:
    """The observer C{majordomo serve} passes to twistd's C{--logger}."""
    return FilteringLogObserver(FileLogObserver(sys.stdout, _format), [_OursOrImportant()])
