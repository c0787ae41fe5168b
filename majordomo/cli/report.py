# -*- test-case-name: tests.test_report -*-
"""
C{majordomo usage}: spend and tokens per model, key, day, provider, proxy
key or metadata value (the choices are L{majordomo.cli.grouping}'s),
counted exactly as the getting-started guide's "Common Queries" count them
(C{COUNT(*)}, C{SUM(...)}), so the report and the guide's SQL always agree
on the same data.  C{--budgets} shows spend against the
keys' budgets instead (L{majordomo.cli.budgets}).

A cost PostgreSQL does not know (C{total_cost} NULL: no price for the model)
is never shown as 0: each group says how many of its requests are unpriced,
and its cost is the sum of the priced ones (NULL when none is priced).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TextIO

from twisted.internet import task
from twisted.python import usage

from majordomo.cli.budgets import BUDGET_WRITERS, fetch_budgets
from majordomo.cli.grouping import GROUPING_NAMES, Grouping, parse_grouping
from majordomo.cli.options import CommandOptions, parse_date
from majordomo.config import Config
from majordomo.db import Database
from majordomo.usage import ERROR_NOT_BILLED

FORMATS = ("table", "json", "csv")

_QUERY = """
SELECT {select},
    COUNT(*) AS requests,
    SUM(lr.input_tokens) AS input_tokens,
    SUM(lr.output_tokens) AS output_tokens,
    SUM(lr.cached_tokens) AS cached_tokens,
    SUM(lr.total_cost) AS total_cost,
    COUNT(*) FILTER (
        WHERE lr.total_cost IS NULL AND lr.usage_status <> %(not_billed)s
    ) AS unpriced
FROM llm_requests lr{join}
WHERE {where}
GROUP BY {group_by}
ORDER BY {order}
"""

NUMBER_FIELDS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "total_cost",
    "unpriced",
)
NUMBER_HEADERS = tuple(name.replace("_", " ").upper() for name in NUMBER_FIELDS)


def build_query(
    grouping: Grouping, since: date | None = None, until: date | None = None
) -> tuple[str, dict[str, Any]]:
    """
    The report's SQL and its parameters.  Only whitelisted text goes into the
    SQL; the metadata name and the dates are always parameters.
    """
    params: dict[str, Any] = {"not_billed": ERROR_NOT_BILLED}
    where = []
    if since is not None:
        where.append("lr.created_at >= %(since)s")
        params["since"] = datetime(since.year, since.month, since.day, tzinfo=UTC)
    if until is not None:
        where.append("lr.created_at < %(until)s")
        params["until"] = datetime(until.year, until.month, until.day, tzinfo=UTC)
    if grouping.metadata is not None:
        # As the guide's "Query usage by metadata": rows without the name are left out.
        where.append("lr.raw_metadata->>%(name)s IS NOT NULL")
        params["name"] = grouping.metadata
    sql = _QUERY.format(
        select=grouping.select,
        join=grouping.join,
        where=" AND ".join(where) or "TRUE",
        group_by=", ".join(str(i + 1) for i in range(len(grouping.fields))),
        order=grouping.order,
    )
    return sql, params


@dataclass(frozen=True)
class UsageRow:
    """One group's totals.  A token or cost total is None when no row of the group knows it."""

    group: tuple[Any, ...]
    requests: int
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    total_cost: Decimal | None
    unpriced: int

    def numbers(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in NUMBER_FIELDS)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)  # SUM(bigint) arrives as a Decimal


def _row(values: Sequence[Any], width: int) -> UsageRow:
    requests, tokens_in, tokens_out, cached, cost, unpriced = values[width:]
    return UsageRow(
        tuple(values[:width]),
        int(requests),
        _int(tokens_in),
        _int(tokens_out),
        _int(cached),
        cost,
        int(unpriced),
    )


async def fetch_usage(
    db: Database, grouping: Grouping, since: date | None = None, until: date | None = None
) -> list[UsageRow]:
    """The report's rows, in the order they are shown."""
    sql, params = build_query(grouping, since, until)
    rows = await db.run_query(sql, params)
    return [_row(values, len(grouping.fields)) for values in rows]


def _sum(values: Sequence[Any]) -> Any:
    known = [value for value in values if value is not None]
    return sum(known[1:], known[0]) if known else None


def total(rows: Sequence[UsageRow]) -> UsageRow:
    """The sum of every group; a token or cost total is None only if no group knows it."""
    return UsageRow(
        (),
        sum(row.requests for row in rows),
        _sum([row.input_tokens for row in rows]),
        _sum([row.output_tokens for row in rows]),
        _sum([row.cached_tokens for row in rows]),
        _sum([row.total_cost for row in rows]),
        sum(row.unpriced for row in rows),
    )


def _text(value: Any, missing: str) -> str:
    if value is None:
        return missing
    if isinstance(value, Decimal):
        return format(value, "f")  # exact, never 1E-7
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _json_value(value: Any) -> Any:
    return value if isinstance(value, int) or value is None else _text(value, "")


def write_json(grouping: Grouping, rows: Sequence[UsageRow], out: TextIO) -> None:
    """A list of objects: tokens as integers, the cost as an exact decimal string."""
    fields = grouping.fields + NUMBER_FIELDS
    objects = [
        dict(zip(fields, map(_json_value, row.group + row.numbers()), strict=True)) for row in rows
    ]
    out.write(json.dumps(objects, indent=2) + "\n")


def write_csv(grouping: Grouping, rows: Sequence[UsageRow], out: TextIO) -> None:
    """A header row, then one row per group; unknown values are empty cells."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(grouping.fields + NUMBER_FIELDS)
    for row in rows:
        writer.writerow([_text(value, "") for value in row.group + row.numbers()])


def write_table(grouping: Grouping, rows: Sequence[UsageRow], out: TextIO) -> None:
    """Aligned columns (numbers to the right) and a TOTAL line."""
    if not rows:
        out.write("No requests match.\n")
        return
    width = len(grouping.fields)
    lines = [grouping.headers + NUMBER_HEADERS]
    lines += [tuple(_text(value, "-") for value in row.group + row.numbers()) for row in rows]
    totals = total(rows)
    lines.append(("TOTAL",) + ("",) * (width - 1) + tuple(_text(v, "-") for v in totals.numbers()))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        cells = [
            cell.ljust(size) if i < width else cell.rjust(size)
            for i, (cell, size) in enumerate(zip(line, widths, strict=True))
        ]
        out.write("  ".join(cells) + "\n")


WRITERS: dict[str, Callable[[Grouping, Sequence[UsageRow], TextIO], None]] = {
    "table": write_table,
    "json": write_json,
    "csv": write_csv,
}


class UsageOptions(CommandOptions):
    synopsis = (
        "[--by model|key|day|provider|proxy-key|metadata:NAME] [--since YYYY-MM-DD] "
        "[--until YYYY-MM-DD] [--format table|json|csv] | --budgets [--format ...]"
    )
    longdesc = (
        "Requests, tokens and spend (USD) per group, counted as the getting-started "
        "guide's SQL counts them, most expensive first (--by day: newest first). "
        "UNPRICED counts the requests whose cost is unknown (no price for the model); "
        "TOTAL COST is the sum of the priced ones."
    )
    optParameters = CommandOptions.optParameters + [
        [
            "by",
            "b",
            None,
            f"{GROUPING_NAMES} (any X-Majordomo-* name); model is the default.",
        ],
        ["since", "s", None, "Only requests that arrived on or after this date (UTC)."],
        ["until", "u", None, "Only requests that arrived before this date (UTC)."],
        ["format", "f", "table", "table, json or csv."],
    ]
    optFlags = [["budgets", None, "Spend against each key's budget in its current window."]]

    def postOptions(self) -> None:
        if self["budgets"] and (self["by"] or self["since"] or self["until"]):
            raise usage.UsageError("--budgets shows current windows: no --by, --since, --until")
        self["grouping"] = parse_grouping(self["by"] or "model")
        self["since"] = parse_date("--since", self["since"])
        self["until"] = parse_date("--until", self["until"])
        if self["since"] and self["until"] and self["since"] >= self["until"]:
            raise usage.UsageError("--since must be before --until")
        if self["format"] not in FORMATS:
            raise usage.UsageError(f"--format: expected table, json or csv, got {self['format']!r}")


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class Progress:
    """
    A spinner and the elapsed time on a terminal while a slow query runs,
    shown only after C{delay} seconds and wiped when done, so quick reports
    and the finished output carry no trace of it.
    """

    FRAMES = "|/-\\"

    def __init__(self, reactor: Any, stream: TextIO, delay: float = 1.0) -> None:
        self._reactor = reactor
        self._stream = stream
        self._delay = delay
        self._started = 0.0
        self._pending: Any = None
        self._loop: task.LoopingCall | None = None
        self._ticks = 0
        self._shown = 0  # length of the line on screen

    def start(self) -> None:
        self._started = self._reactor.seconds()
        self._pending = self._reactor.callLater(self._delay, self._begin)

    def _begin(self) -> None:
        self._pending = None
        self._loop = task.LoopingCall(self._draw)
        self._loop.clock = self._reactor
        self._loop.start(0.1)

    def _draw(self) -> None:
        elapsed = self._reactor.seconds() - self._started
        frame = self.FRAMES[self._ticks % len(self.FRAMES)]
        self._ticks += 1
        line = f"{frame} Querying llm_requests... {elapsed:.0f}s elapsed"
        self._stream.write("\r" + line.ljust(self._shown))
        self._stream.flush()
        self._shown = max(self._shown, len(line))

    def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._loop is not None:
            self._loop.stop()
            self._loop = None
        if self._shown:
            self._stream.write("\r" + " " * self._shown + "\r")
            self._stream.flush()
            self._shown = 0


def progress_for(reactor: Any, out: TextIO, err: TextIO) -> Progress | None:
    """A L{Progress} on C{err} when both streams are terminals; none for pipes and files."""
    return Progress(reactor, err) if _is_terminal(out) and _is_terminal(err) else None


async def usage_command(
    reactor: Any, config: Config, options: Any, out: TextIO, err: TextIO
) -> int:
    """C{majordomo usage}: query, then write the report in the chosen format."""
    grouping = options["grouping"]
    progress = progress_for(reactor, out, err)
    db = Database(config.storage.postgres, reactor=reactor, pool_size=1)
    if progress is not None:
        progress.start()
    try:
        await db.connect_once()
        if options["budgets"]:
            budgets = await fetch_budgets(db)
        else:
            rows = await fetch_usage(db, grouping, options["since"], options["until"])
    finally:
        if progress is not None:
            progress.stop()
        db.close()
    if options["budgets"]:
        BUDGET_WRITERS[options["format"]](budgets, out)
    else:
        WRITERS[options["format"]](grouping, rows, out)
    return 0
