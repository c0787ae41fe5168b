"""
`majordomo usage`: the real command against real rows, its numbers checked
against the getting-started guide's own SQL on the same data.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg2
from twisted.internet import defer, protocol, reactor, task
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from majordomo import cli
from majordomo.cli import grouping, report
from tests import support
from tests.guide import GUIDE_BY_KEY, GUIDE_BY_MODEL, GUIDE_BY_USER, GUIDE_DAILY
from tests.test_cli import majordomo

# The guide has no provider query; this is its model query grouped by provider.
BY_PROVIDER = GUIDE_BY_MODEL.replace("model", "provider")

DEV = "0195a000-0000-7000-8000-00000000d001"
PROD = "0195a000-0000-7000-8000-00000000d002"
KEY_NAMES = {DEV: "Development", PROD: "Production"}

# n, created_at, key, provider, model, input, output, cached, total_cost, usage_status, metadata
ROWS: list[tuple[Any, ...]] = [
    (1, "2026-03-01 09:00+00", DEV, "openai", "gpt-4o-mini", 1000, 200, 0, "0.00027",
     "complete", {"User-Id": "alice"}),
    # Late on 1 March in UTC, 2 March nowhere: the day is UTC's.
    (2, "2026-03-01 23:30+00", DEV, "openai", "gpt-4o", 2000, 500, 1000, "0.00875",
     "complete", {"User-Id": "bob"}),
    (3, "2026-03-02 00:15+00", PROD, "anthropic", "claude-sonnet-4", 3000, 400, 0, "0.015",
     "complete", {}),
    (4, "2026-03-02 10:00+00", PROD, "openai", "gpt-4o-mini", 500, 50, 0, "0.000105",
     "complete", {"User-Id": "alice", "Feature": "chat"}),
    (5, "2026-03-02 11:00+00", DEV, "anthropic", "claude-sonnet-4", 1200, 300, 200, "0.00846",
     "complete", {"User-Id": "carol"}),
    # No price for it: its cost is unknown, not 0.
    (6, "2026-03-02 12:00+00", PROD, "anthropic", "claude-sonnet-4", 800, 100, 0, None,
     "complete", {"User-Id": "dave"}),
    # An error the provider did not bill: cost 0, not unpriced.
    (7, "2026-03-03 08:00+00", DEV, "openai", "gpt-4o", 0, 0, 0, "0",
     "error_not_billed", {"User-Id": "bob"}),
    (8, "2026-03-03 09:00+00", PROD, "openai", "gpt-4o", 4000, 800, 2000, "0.0155",
     "complete", {}),
    # A cost Python's str() would write as 7.5E-7.
    (9, "2026-03-03 15:00+00", DEV, "openai", "gpt-4o-mini", 3, 1, 0, "0.00000075",
     "complete", {"User-Id": "erin"}),
    (10, "2026-03-03 23:59:59+00", PROD, "openai", "gpt-4o-mini", 2500, 600, 500, "0.0004425",
     "complete", {"User-Id": "alice"}),
]  # fmt: skip

INSERT = """
INSERT INTO llm_requests (id, created_at, majordomo_api_key_id, provider, method, path,
    model, input_tokens, output_tokens, cached_tokens, total_cost, usage_status, raw_metadata)
VALUES (%s, %s, %s, %s, 'POST', '/v1/chat/completions', %s, %s, %s, %s, %s, %s, %s)
"""
ROW_DAY = {n: created[:10] for n, created, *_ in ROWS}


def seed() -> None:
    support.fresh_database()
    for key_id, name in KEY_NAMES.items():
        support.run_sql(
            "INSERT INTO api_keys (id, name, key_hash) VALUES (%s, %s, %s)",
            (key_id, name, "hash-" + name),
        )
    for n, created, key, provider, model, t_in, t_out, cached, cost, status, meta in ROWS:
        support.run_sql(
            INSERT,
            (
                f"0195a000-0000-7000-8000-{n:012d}",
                created,
                key,
                provider,
                model,
                t_in,
                t_out,
                cached,
                cost,
                status,
                json.dumps(meta),
            ),
        )


def expected(group: Callable[[tuple[Any, ...]], Any], rows: Any = ROWS) -> dict[Any, dict]:
    """Every column of the report, computed in Python from the seed rows."""
    result: dict[Any, dict] = {}
    for row in rows:
        key = group(row)
        if key is None:
            continue
        _, _, _, _, _, t_in, t_out, cached, cost, status, _ = row
        totals = result.setdefault(
            key,
            {"requests": 0, "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0,
             "total_cost": None, "unpriced": 0},
        )  # fmt: skip
        totals["requests"] += 1
        totals["input_tokens"] += t_in
        totals["output_tokens"] += t_out
        totals["cached_tokens"] += cached
        if cost is None:
            totals["unpriced"] += status != "error_not_billed"
        else:
            totals["total_cost"] = Decimal(cost) + (totals["total_cost"] or 0)
    for totals in result.values():
        if totals["total_cost"] is not None:
            totals["total_cost"] = format(totals["total_cost"], "f")
    return result


def cost_text(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


async def usage_json(*args: str, **env: str) -> list[dict[str, Any]]:
    out, err, code = await majordomo("usage", *args, "--format", "json", **env)
    if (err, code) != ("", 0):
        raise AssertionError(f"exit {code}: {err}")
    result: list[dict[str, Any]] = json.loads(out)
    return result


def by_field(report_rows: list[dict[str, Any]], *fields: str) -> dict[Any, dict]:
    """The report keyed by its group column(s), numbers only."""
    keyed = {}
    for row in report_rows:
        key = tuple(row[f] for f in fields)
        keyed[key[0] if len(key) == 1 else key] = {name: row[name] for name in report.NUMBER_FIELDS}
    return keyed


class GuideQueryTests(TestCase):
    """Each --by gives the numbers the guide's SQL gives on the same data."""

    def setUp(self) -> None:
        seed()

    def test_by_model(self) -> defer.Deferred[None]:
        """--by model equals the guide's "Total spend by model", in its order; tokens are ints."""

        async def go() -> None:
            got = await usage_json("--by", "model")
            guide = support.run_sql(GUIDE_BY_MODEL)
            self.assertEqual(
                [
                    (r["model"], r["requests"], r["input_tokens"], r["output_tokens"],
                     r["total_cost"])
                    for r in got
                ],
                [(m, n, int(i), int(o), cost_text(c)) for m, n, i, o, c in guide],
            )  # fmt: skip
            self.assertEqual(by_field(got, "model"), expected(lambda r: r[4]))
            self.assertEqual(
                [r["model"] for r in got], ["gpt-4o", "claude-sonnet-4", "gpt-4o-mini"]
            )
            self.assertIsInstance(got[0]["input_tokens"], int)
            self.assertIsInstance(got[0]["total_cost"], str)

        return support.as_deferred(go())

    def test_by_day(self) -> defer.Deferred[None]:
        """
        --by day equals the guide's "Daily spend" (newest first), with days in
        UTC even when the session's time zone is not UTC.
        """

        async def go() -> None:
            guide = support.run_sql("SET TIME ZONE 'UTC';" + GUIDE_DAILY)
            want = [(d.isoformat(), n, cost_text(c)) for d, n, c in guide]
            self.assertEqual([d for d, _, _ in want], ["2026-03-03", "2026-03-02", "2026-03-01"])
            for env in ({}, {"PGTZ": "America/New_York"}, {"PGTZ": "Asia/Tokyo"}):
                got = await usage_json("--by", "day", **env)
                self.assertEqual([(r["date"], r["requests"], r["total_cost"]) for r in got], want)
                self.assertEqual(by_field(got, "date"), expected(lambda r: r[1][:10]))

        return support.as_deferred(go())

    def test_by_key(self) -> defer.Deferred[None]:
        """--by key equals the guide's "Spend by API key", showing each key's name and id."""

        async def go() -> None:
            got = await usage_json("--by", "key")
            guide = support.run_sql(GUIDE_BY_KEY)
            self.assertEqual(
                [(r["key_name"], r["requests"], r["total_cost"]) for r in got],
                [(name, n, cost_text(c)) for name, n, c in guide],
            )
            self.assertEqual(
                by_field(got, "key_name", "key_id"),
                expected(lambda r: (KEY_NAMES[r[2]], r[2])),
            )

        return support.as_deferred(go())

    def test_by_metadata(self) -> defer.Deferred[None]:
        """
        --by metadata:user-ID (any case) equals the guide's "Query usage by
        metadata" for User-Id: rows without it are left out, and a user whose
        only request is unpriced has cost null and comes last.
        """

        async def go() -> None:
            got = await usage_json("--by", "metadata:user-ID")
            guide = support.run_sql(GUIDE_BY_USER)
            self.assertEqual(
                {r["User-Id"]: (r["requests"], r["total_cost"]) for r in got},
                {user: (n, cost_text(c)) for user, n, c in guide},
            )
            self.assertEqual(by_field(got, "User-Id"), expected(lambda r: r[10].get("User-Id")))
            self.assertEqual([r["User-Id"] for r in got], ["bob", "carol", "alice", "erin", "dave"])
            self.assertEqual((got[-1]["total_cost"], got[-1]["unpriced"]), (None, 1))
            self.assertEqual(got[-2]["total_cost"], "0.00000075")
            # The header's own name works too.
            self.assertEqual(await usage_json("--by", "metadata:X-Majordomo-User-Id"), got)

        return support.as_deferred(go())

    def test_by_provider(self) -> defer.Deferred[None]:
        """--by provider equals the guide's model query grouped by provider."""

        async def go() -> None:
            got = await usage_json("--by", "provider")
            self.assertEqual(
                [
                    (r["provider"], r["requests"], r["input_tokens"], r["output_tokens"],
                     r["total_cost"])
                    for r in got
                ],
                [(p, n, int(i), int(o), cost_text(c)) for p, n, i, o, c in
                 support.run_sql(BY_PROVIDER)],
            )  # fmt: skip
            self.assertEqual(by_field(got, "provider"), expected(lambda r: r[3]))

        return support.as_deferred(go())

    def test_metadata_name_is_a_parameter(self) -> defer.Deferred[None]:
        """A metadata name that looks like SQL is only ever a name: it matches nothing."""

        async def go() -> None:
            self.assertEqual(await usage_json("--by", "metadata:x' OR '1'='1"), [])
            got = await usage_json("--by", "metadata:feature")
            self.assertEqual(by_field(got, "Feature"), expected(lambda r: r[10].get("Feature")))

        return support.as_deferred(go())


# Proxy keys: two named alike under different Majordomo keys (kept apart by
# id), and an id whose proxy key row is gone.
CI_DEV = "0195a000-0000-7000-8000-0000000e0001"
NOTEBOOK = "0195a000-0000-7000-8000-0000000e0002"
CI_PROD = "0195a000-0000-7000-8000-0000000e0003"
GONE = "0195a000-0000-7000-8000-0000000e0004"
PROXY_KEYS = {CI_DEV: ("ci-bot", DEV), NOTEBOOK: ("notebook", PROD), CI_PROD: ("ci-bot", PROD)}
# Seed row number -> the proxy key it was sent with; the others used none.
ROW_PROXY_KEY = {1: CI_DEV, 2: CI_DEV, 3: NOTEBOOK, 6: NOTEBOOK, 8: CI_PROD, 9: GONE}


def seed_proxy_keys() -> None:
    for proxy_key_id, (name, key_id) in PROXY_KEYS.items():
        support.run_sql(
            "INSERT INTO proxy_keys (id, majordomo_api_key_id, name, key_hash) "
            "VALUES (%s, %s, %s, %s)",
            (proxy_key_id, key_id, name, "hash-" + proxy_key_id),
        )
    for n, proxy_key_id in ROW_PROXY_KEY.items():
        support.run_sql(
            "UPDATE llm_requests SET proxy_key_id = %s WHERE id = %s",
            (proxy_key_id, f"0195a000-0000-7000-8000-{n:012d}"),
        )


def proxy_key_group(row: tuple[Any, ...]) -> tuple[str, str | None]:
    proxy_key_id = ROW_PROXY_KEY.get(row[0])
    if proxy_key_id is None:
        return ("(none)", None)
    return (
        PROXY_KEYS[proxy_key_id][0] if proxy_key_id in PROXY_KEYS else "(deleted)",
        proxy_key_id,
    )


class ProxyKeyTests(TestCase):
    """--by proxy-key: every request counted, per proxy key, by its name and id."""

    def setUp(self) -> None:
        seed()
        seed_proxy_keys()

    def test_by_proxy_key(self) -> defer.Deferred[None]:
        """
        Each proxy key is one group with its name and id (same-named keys
        apart), requests without one are "(none)" with a null id, an id
        whose proxy key is gone is "(deleted)"; costs are exact, most
        expensive first, and the groups add up to --by model's totals.
        """

        async def go() -> None:
            got = await usage_json("--by", "proxy-key")
            self.assertEqual(
                by_field(got, "proxy_key_name", "proxy_key_id"), expected(proxy_key_group)
            )
            self.assertEqual(
                [(r["proxy_key_name"], r["proxy_key_id"], r["total_cost"]) for r in got],
                [
                    ("ci-bot", CI_PROD, "0.0155"),
                    ("notebook", NOTEBOOK, "0.015"),
                    ("ci-bot", CI_DEV, "0.00902"),
                    ("(none)", None, "0.0090075"),
                    ("(deleted)", GONE, "0.00000075"),
                ],
            )
            self.assertEqual(got[1]["unpriced"], 1)
            self.assertEqual(
                report.total([report_row(r) for r in got]).numbers(),
                report.total([report_row(r) for r in await usage_json("--by", "model")]).numbers(),
            )
            # The name in any case; --since/--until apply as to every grouping.
            march_3 = await usage_json("--by", "PROXY-KEY", "--since", "2026-03-03")
            self.assertEqual(
                by_field(march_3, "proxy_key_name", "proxy_key_id"),
                expected(proxy_key_group, [r for r in ROWS if r[1] >= "2026-03-03"]),
            )

        return support.as_deferred(go())

    def test_table_and_csv(self) -> defer.Deferred[None]:
        """The table shows the name and id ("-" for none); CSV parses back to the JSON."""

        async def go() -> None:
            out, err, code = await majordomo("usage", "--by", "proxy-key")
            self.assertEqual((err, code), ("", 0))
            lines = out.splitlines()
            self.assertEqual(
                re.split(r"  +", lines[0].strip()),
                ["PROXY KEY", "PROXY KEY ID", "REQUESTS", "INPUT TOKENS", "OUTPUT TOKENS",
                 "CACHED TOKENS", "TOTAL COST", "UNPRICED"],
            )  # fmt: skip
            self.assertEqual(lines[1].split()[:3], ["ci-bot", CI_PROD, "1"])
            self.assertEqual(lines[4].split(), ["(none)", "-", "4", "4200", "950", "700",
                                                "0.0090075", "0"])  # fmt: skip
            self.assertEqual(lines[-1].split()[:2], ["TOTAL", str(len(ROWS))])
            out, err, code = await majordomo("usage", "--by", "proxy-key", "--format", "csv")
            self.assertEqual((err, code), ("", 0))
            parsed = [
                {
                    name: None if value == "" else
                    value if name in ("proxy_key_name", "proxy_key_id", "total_cost")
                    else int(value)
                    for name, value in row.items()
                }
                for row in csv.DictReader(io.StringIO(out))
            ]  # fmt: skip
            self.assertEqual(parsed, await usage_json("--by", "proxy-key"))

        return support.as_deferred(go())


def report_row(row: dict[str, Any]) -> report.UsageRow:
    """A JSON report row back as a L{report.UsageRow} (its cost a Decimal)."""
    cost = row["total_cost"]
    numbers = {name: row[name] for name in report.NUMBER_FIELDS}
    numbers["total_cost"] = None if cost is None else Decimal(cost)
    return report.UsageRow((), **numbers)


class FilterAndFormatTests(TestCase):
    """--since/--until, and the table and CSV formats."""

    def setUp(self) -> None:
        seed()

    def test_since_until(self) -> defer.Deferred[None]:
        """--since is inclusive and --until exclusive, both UTC dates whatever PGTZ says."""

        async def go() -> None:
            cases = [
                (("--since", "2026-03-02"), {"2026-03-02", "2026-03-03"}),
                (("--until", "2026-03-02"), {"2026-03-01"}),
                (("--since", "2026-03-02", "--until", "2026-03-03"), {"2026-03-02"}),
                (("--since", "2026-03-04"), set()),
            ]
            for args, days in cases:
                rows = [r for r in ROWS if r[1][:10] in days]
                for env in ({}, {"PGTZ": "Pacific/Auckland"}):
                    got = await usage_json("--by", "model", *args, **env)
                    self.assertEqual(
                        by_field(got, "model"), expected(lambda r: r[4], rows), (args, env)
                    )

        return support.as_deferred(go())

    def test_table(self) -> defer.Deferred[None]:
        """
        The table's columns line up (numbers to the right), an unknown cost
        shows as "-", and the TOTAL line sums every group.
        """

        async def go() -> None:
            out, err, code = await majordomo("usage", "--by", "metadata:User-Id")
            self.assertEqual((err, code), ("", 0))
            lines = out.splitlines()
            self.assertEqual(len(lines), 1 + 5 + 1)
            header, body, last = lines[0], lines[1:-1], lines[-1]
            self.assertEqual(
                re.split(r"  +", header),
                ["USER-ID", "REQUESTS", "INPUT TOKENS", "OUTPUT TOKENS", "CACHED TOKENS",
                 "TOTAL COST", "UNPRICED"],
            )  # fmt: skip
            self.assertEqual({len(line) for line in lines}, {len(header)})
            for match in list(re.finditer(r"\S+(?: \S+)*", header))[1:]:
                for line in lines[1:]:
                    self.assertNotEqual(line[match.end() - 1], " ", (match.group(), line))
                    self.assertEqual(line[match.end() : match.end() + 1].strip(), "")
            self.assertEqual(body[0].split(), ["bob", "2", "2000", "500", "1000", "0.00875", "0"])
            self.assertEqual(body[-1].split(), ["dave", "1", "800", "100", "0", "-", "1"])
            users = expected(lambda r: r[10].get("User-Id")).values()
            costs = [Decimal(u["total_cost"]) for u in users if u["total_cost"] is not None]
            totals = [
                format(sum(costs[1:], costs[0]), "f")
                if name == "total_cost"
                else str(sum(u[name] for u in users))
                for name in report.NUMBER_FIELDS
            ]
            self.assertEqual(last.split(), ["TOTAL", *totals])
            self.assertEqual(last.split()[1:4], ["8", "8003", "1751"])

        return support.as_deferred(go())

    def test_csv(self) -> defer.Deferred[None]:
        """CSV has a header row and parses back to the JSON report's numbers."""

        async def go() -> None:
            for by in ("key", "metadata:User-Id", "day"):
                out, err, code = await majordomo("usage", "--by", by, "--format", "csv")
                self.assertEqual((err, code), ("", 0))
                parsed = list(csv.DictReader(io.StringIO(out)))
                got = [
                    {
                        name: None if value == "" else
                        value if name in ("total_cost", *grouping.parse_grouping(by).fields)
                        else int(value)
                        for name, value in row.items()
                    }
                    for row in parsed
                ]  # fmt: skip
                self.assertEqual(got, await usage_json("--by", by))

        return support.as_deferred(go())

    def test_usage_errors(self) -> defer.Deferred[None]:
        """A bad --by or a bad date is one clear usage error, exit 2, and no output."""

        async def go() -> None:
            for args, message in [
                (
                    ("--by", "colour"),
                    "majordomo: --by: expected model, key, day, provider, proxy-key or metadata",
                ),
                (("--since", "2026-02-30"), "majordomo: --since: not a date (YYYY-MM-DD)"),
                (("--until", "03/01/2026"), "majordomo: --until: not a date (YYYY-MM-DD)"),
            ]:
                out, err, code = await majordomo("usage", *args)
                self.assertEqual((out, code), ("", 2))
                self.assertTrue(err.startswith(message), err)
                self.assertEqual(err.count("\n"), 2)  # the message and "(see majordomo --help)"
                self.assertNotIn("Traceback", err)

        return support.as_deferred(go())


class OptionsTests(SynchronousTestCase):
    """`usage`'s options, parsed as the command line gives them."""

    def parse(self, *args: str) -> Any:
        return cli.parse(["usage", *args]).subOptions

    def test_defaults(self) -> None:
        """Without options: by model, no dates, a table; --config is accepted after them."""
        options = self.parse("--config", "/nonexistent.yaml")
        self.assertEqual(options["grouping"].by, "model")
        self.assertEqual(
            (options["since"], options["until"], options["format"]), (None, None, "table")
        )

    def test_bad_values(self) -> None:
        """Every bad value is a UsageError that names the option."""
        for args, message in [
            (["--by", "metadata:"], "--by metadata:NAME"),
            (["--by", "metadata:" + "x" * 65], "--by metadata:NAME"),
            (["--since", "20260301"], "--since"),
            (["--since", "2026-03-03", "--until", "2026-03-01"], "--since must be before"),
            (["--format", "xml"], "--format"),
            (["extra"], "Wrong number of arguments"),
        ]:
            error = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertIn(message, str(error))

    def test_sql_never_holds_user_text(self) -> None:
        """The metadata name and the dates reach PostgreSQL only as parameters."""
        options = self.parse("--by", "metadata:evil'--", "--since", "2026-03-01")
        sql, params = report.build_query(options["grouping"], options["since"], None)
        self.assertNotIn("evil", sql)
        self.assertNotIn("2026", sql)
        self.assertEqual(params["name"], "Evil'--")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class ProgressTests(SynchronousTestCase):
    """The spinner shows only on a terminal, only for slow queries, and is wiped after."""

    def test_slow_query_on_terminal(self) -> None:
        """Nothing for the first second; then a spinner with the elapsed time; wiped at stop."""
        clock = task.Clock()
        terminal = FakeTerminal()
        progress = report.progress_for(clock, FakeTerminal(), terminal)
        assert progress is not None
        progress.start()
        clock.advance(0.9)
        self.assertEqual(terminal.getvalue(), "")
        clock.pump([0.1] * 15)
        shown = terminal.getvalue()
        self.assertIn("Querying llm_requests... 2s elapsed", shown)
        progress.stop()
        wiped = terminal.getvalue()[len(shown) :]
        self.assertRegex(wiped, r"\A\r +\r\Z")
        self.assertEqual(len(wiped) - 2, max(len(s) for s in shown.split("\r")))
        clock.advance(5)
        self.assertEqual(terminal.getvalue(), shown + wiped)

    def test_quick_query(self) -> None:
        """A query done within the second leaves the terminal untouched."""
        clock = task.Clock()
        terminal = FakeTerminal()
        progress = report.Progress(clock, terminal)
        progress.start()
        clock.advance(0.5)
        progress.stop()
        clock.advance(5)
        self.assertEqual(terminal.getvalue(), "")

    def test_not_a_terminal(self) -> None:
        """Output or stderr redirected: no progress at all."""
        self.assertIsNone(report.progress_for(task.Clock(), io.StringIO(), FakeTerminal()))
        self.assertIsNone(report.progress_for(task.Clock(), FakeTerminal(), io.StringIO()))


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.data = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.data += data

    def errReceived(self, data: bytes) -> None:
        self.data += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


class SlowQueryTests(TestCase):
    """A report whose query waits on a lock for over a second, as a slow report does."""

    def setUp(self) -> None:
        seed()

    async def _while_locked(self, run: Callable[[], defer.Deferred[Any]]) -> Any:
        """Start C{run}, hold llm_requests locked until its query has waited 1.5 s."""
        lock = psycopg2.connect(
            host=support.PG_HOST,
            port=support.PG_PORT,
            user=support.PG_USER,
            dbname=support.TEST_DATABASE,
        )
        try:
            with lock.cursor() as cursor:
                cursor.execute("LOCK TABLE llm_requests IN ACCESS EXCLUSIVE MODE")
            result = run()
            await support.wait_for(
                lambda: support.run_sql(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%FROM llm_requests lr%'"
                ),
                timeout=30,
            )
            await support.sleep(1.5)
        finally:
            lock.rollback()
            lock.close()
        return await result

    def test_no_progress_when_piped(self) -> defer.Deferred[None]:
        """Piped output stays clean: no spinner on stderr, just the report on stdout."""

        async def go() -> None:
            out, err, code = await self._while_locked(
                lambda: support.as_deferred(majordomo("usage", "--format", "json"))
            )
            self.assertEqual((err, code), ("", 0))
            self.assertEqual(by_field(json.loads(out), "model"), expected(lambda r: r[4]))

        return support.as_deferred(go())

    def test_progress_on_terminal(self) -> defer.Deferred[None]:
        """On a terminal the spinner appears while waiting and is wiped before the table."""

        async def go() -> None:
            collect = _Collect()
            args = [support.MAJORDOMO_BIN, "usage"]

            def spawn() -> defer.Deferred[int]:
                reactor.spawnProcess(collect, args[0], args, env=support.test_env(), usePTY=True)
                return collect.ended

            code = await self._while_locked(spawn)
            self.assertEqual(code, 0)
            text = collect.data.decode()
            wipe = re.search(r"\r +\r", text)
            self.assertIsNotNone(wipe, repr(text))
            assert wipe is not None
            self.assertIn("Querying llm_requests... 1s elapsed", text[: wipe.start()])
            table = text[wipe.end() :].replace("\r\n", "\n")
            self.assertTrue(table.startswith("MODEL "), repr(table))
            self.assertTrue(table.splitlines()[-1].startswith("TOTAL "), repr(table))

        return support.as_deferred(go())
