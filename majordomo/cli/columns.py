# -*- test-case-name: tests.test_cli -*-
"""Text output the commands share: aligned columns, and times as a person reads them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO


def write_columns(rows: Sequence[tuple[str, ...]], out: TextIO, numbers: range = range(0)) -> None:
    """Aligned columns under the first row (the header); the C{numbers} columns right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.rjust(width) if i in numbers else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        out.write("  ".join(cells).rstrip() + "\n")


def format_time(value: Any) -> str:
    """A stored timestamp to the second with its zone, or C{never}."""
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if value else "never"
