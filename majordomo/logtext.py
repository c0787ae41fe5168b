# -*- test-case-name: tests.test_secrets_in_logs -*-
"""
Text from callers and providers, made safe to put in a log line: control
characters escaped (so a newline in a model name cannot forge a second
line), long values shortened, and exceptions described without their
message (which may hold a URL with a C{?key=} or a header).
"""

from __future__ import annotations

import re

from twisted.python.failure import Failure

# C0 and C1 controls, DEL, and the line and paragraph separators and
# bidirectional overrides that make one line read as another.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
DEFAULT_LIMIT = 200  # characters of one value kept in a log line


def printable(text: object, limit: int | None = DEFAULT_LIMIT) -> str:
    """C{text} with control characters escaped (C{\\n}, C{\\x1b}, C{\\u2028}), cut to C{limit}."""
    text = str(text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def failure_text(failure: Failure) -> str:
    """
    What failed and where: the exception's type and the traceback's frames
    (file, line, function), never the exception's message or locals.
    """
    lines = [f"{failure.type.__module__}.{failure.type.__qualname__}"]  # type: ignore[union-attr]
    for function, file, line, *_ in failure.frames:
        lines.append(f'  File "{file}", line {line}, in {function}')
    return "\n".join(lines)
