"""
Every answered request has its row: whatever the caller or the provider put
in strings (NUL, lone surrogates) or counts (beyond bigint, negative, not
integers), the row is made storable before it is journaled, its counts are
NULL with usage_status C{invalid_usage} rather than 0 and C{complete}, and a
row PostgreSQL still refuses is stored again in a reduced form, counted
against its key (L{majordomo.ledger.storable}, L{majordomo.ledger.writer}).
"""

from __future__ import annotations

import json
import math
import os
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from majordomo.ledger import storable
from majordomo.ledger.record import TOKEN_COLUMNS, RequestRecord
from majordomo.ledger.writer import encode_record
from majordomo.pricing.cost import Cost
from majordomo.usage import (
    COMPLETE,
    INVALID_USAGE,
    InvalidCount,
    Usage,
    has_count,
    tokens,
)
from majordomo.usage.choose import make_usage_parser
from tests import support
from tests.gateway_case import GatewayTestCase
from tests.test_logwriter import ARRIVED, LogWriterTestCase, answered, stored_ids

REPLACED = "\ufffd"

# Counts no provider can have billed, each as the JSON text of its value.
INVALID_COUNTS = ["9223372036854775808", "-5", "1" + "0" * 30, "1.5", '"12"', "true"]


class TextTests(SynchronousTestCase):
    """Strings lose exactly the characters PostgreSQL cannot hold."""

    def test_nul_and_lone_surrogates_replaced(self) -> None:
        """NUL and every lone surrogate become U+FFFD; nothing else changes."""
        self.assertEqual(storable.text("a\x00b"), f"a{REPLACED}b")
        self.assertEqual(storable.text("\ud800x\udfff"), f"{REPLACED}x{REPLACED}")
        kept = "plain, \x01\x1f\x7f, caf\u00e9, \U0001f600, \\u0000"
        self.assertIs(storable.text(kept), kept)

    def test_nested_values(self) -> None:
        """Inside JSON values, keys and strings are cleaned and non-finite floats are null."""
        value = {
            "k\x00": ["v\ud800", {"\udc00": 1.5}],
            "nan": math.nan,
            "inf": [math.inf, -math.inf],
            "big": 10**30,
            "exact": Decimal("0.1"),
            "ok": [True, None, 3],
        }
        self.assertEqual(
            storable.value(value),
            {
                f"k{REPLACED}": [f"v{REPLACED}", {REPLACED: 1.5}],
                "nan": None,
                "inf": [None, None],
                "big": 10**30,  # jsonb numerics are arbitrary precision
                "exact": Decimal("0.1"),
                "ok": [True, None, 3],
            },
        )

    def test_other_types(self) -> None:
        """Subclasses are read as their JSON type; anything else as its (cleaned) text."""
        request_id = uuid.uuid4()
        self.assertEqual(
            storable.value([HTTPStatus.OK, (1, "x\x00"), request_id]),
            [200, [1, f"x{REPLACED}"], str(request_id)],
        )
        self.assertIs(type(storable.value(HTTPStatus.OK)), int)

    def test_deep_nesting_cut(self) -> None:
        """A value nested deeper than any usage object is cut, never a RecursionError."""
        deep: Any = "leaf"
        for _ in range(5000):
            deep = [deep]
        cleaned = storable.value(deep)
        depth = 0
        while isinstance(cleaned, list):
            cleaned, depth = cleaned[0], depth + 1
        self.assertIsNone(cleaned)
        self.assertEqual(depth, storable.MAX_DEPTH)


def a_row(**usage: Any) -> dict[str, Any]:
    """The row of an answered request whose usage has C{usage} counts."""
    record = RequestRecord.start(
        request_id=uuid.uuid4(),
        arrived=ARRIVED.timestamp(),
        key_id=str(uuid.uuid4()),
        provider="openai",
        method="POST",
        path="/v1/chat/completions",
        model_requested="gpt-4o-mini",
        provider_key_hash=None,
    )
    cost = Cost(Decimal("1"), Decimal("2"), Decimal("3"), "gpt-4o-mini", "base", "bundled", True)
    return record.finish(
        now=ARRIVED.timestamp() + 1,
        status_code=200,
        usage=Usage(COMPLETE, model="gpt-4o-mini", **{"input_tokens": 1, **usage}),
        cost=cost,
        stream=False,
        error_message=None,
    )


class RowTests(SynchronousTestCase):
    """A row is checked column by column: the last line of defence."""

    def test_every_string_column_cleaned(self) -> None:
        row = a_row()
        row.update(
            model="m\x00",
            error_message="\ud800",
            raw_metadata={"user\x00": "x\udbff"},
            raw_usage={"prompt_tokens": 1, "odd\x00": math.nan},
        )
        cleaned = storable.row(row)
        self.assertEqual(cleaned["model"], f"m{REPLACED}")
        self.assertEqual(cleaned["error_message"], REPLACED)
        self.assertEqual(cleaned["raw_metadata"], {f"user{REPLACED}": f"x{REPLACED}"})
        self.assertEqual(cleaned["raw_usage"], {"prompt_tokens": 1, f"odd{REPLACED}": None})
        self.assertEqual(row["model"], "m\x00", "the caller's dict is left alone")

    def test_valid_counts_kept(self) -> None:
        row = a_row(output_tokens=2**63 - 1, cached_tokens=0)
        self.assertEqual(storable.row(row), row)

    def test_invalid_count_makes_usage_invalid(self) -> None:
        """Any count out of bigint or negative or not an integer: all NULL, invalid, no cost."""
        for bad in [2**63, -1, 1.5, "12", True, 10**30, 10**5000]:
            cleaned = storable.row(a_row(output_tokens=bad))
            self.assertEqual(cleaned["usage_status"], INVALID_USAGE, bad)
            self.assertEqual({cleaned[c] for c in TOKEN_COLUMNS}, {None}, bad)
            self.assertEqual(
                (cleaned["input_cost"], cleaned["output_cost"], cleaned["total_cost"]),
                (None, None, None),
            )

    def test_floats_and_status(self) -> None:
        row = a_row()
        row.update(ttfb_ms=math.nan, duration_ms=math.inf, status_code=2**40)
        cleaned = storable.row(row)
        self.assertEqual((cleaned["ttfb_ms"], cleaned["duration_ms"]), (None, None))
        self.assertIsNone(cleaned["status_code"])

    def test_reduced_row_keeps_only_gateway_facts(self) -> None:
        row = a_row()
        row.update(method="POST", model="x" * 10, raw_metadata={"team": "secret-plan"})
        reduced = storable.reduced_row(json.loads(encode_record(row)), "why")
        assert reduced is not None
        self.assertEqual(
            {k: reduced[k] for k in ("id", "majordomo_api_key_id", "provider", "method")},
            {k: row[k] for k in ("id", "majordomo_api_key_id", "provider", "method")},
        )
        self.assertEqual(reduced["status_code"], 200)
        self.assertEqual(reduced["error_message"], "why")
        self.assertEqual((reduced["path"], reduced["raw_metadata"]), ("", {}))
        self.assertNotIn("model", reduced)
        self.assertNotIn("x" * 10, json.dumps(reduced))

    def test_reduced_row_refuses_what_it_cannot_trust(self) -> None:
        """No id, no reduced row; a method that is not a plain token is not kept."""
        row = json.loads(encode_record(a_row()))
        self.assertIsNone(storable.reduced_row({**row, "id": "nope"}, "why"))
        reduced = storable.reduced_row({**row, "method": "GET /\x00", "status_code": True}, "")
        assert reduced is not None
        self.assertEqual((reduced["method"], reduced["status_code"]), ("OTHER", None))

    def test_reduced_row_keeps_proxy_key(self) -> None:
        """
        The proxy key whose provider key a request used is the gateway's own
        fact: kept (as a uuid), so its count agrees with the rows; a value
        that is not a uuid is not kept, and no proxy key stays none.
        """
        proxy_key_id = str(uuid.uuid4())
        row = json.loads(encode_record({**a_row(), "proxy_key_id": proxy_key_id}))
        kept = storable.reduced_row(row, "why")
        assert kept is not None
        self.assertEqual(kept["proxy_key_id"], proxy_key_id)
        upper = storable.reduced_row({**row, "proxy_key_id": proxy_key_id.upper()}, "why")
        assert upper is not None
        self.assertEqual(upper["proxy_key_id"], proxy_key_id)
        for bad in ["mdm_pk_not-an-id", "", 7, None, {"id": proxy_key_id}]:
            reduced = storable.reduced_row({**row, "proxy_key_id": bad}, "why")
            assert reduced is not None
            self.assertIsNone(reduced["proxy_key_id"], bad)
            self.assertNotIn("mdm_pk_", json.dumps(reduced))
        plain = storable.reduced_row(json.loads(encode_record(a_row())), "why")
        assert plain is not None
        self.assertIsNone(plain["proxy_key_id"])


class CountTests(SynchronousTestCase):
    """A reported count that is not a count is told apart from an absent one."""

    def test_absent_counts_are_zero(self) -> None:
        self.assertEqual(tokens({}, "a"), 0)
        self.assertEqual(tokens({"a": None}, "a"), 0)
        self.assertEqual(tokens({"d": None}, "d", "a"), 0)
        self.assertEqual(tokens({"a": 2**63 - 1}, "a"), 2**63 - 1)

    def test_invalid_counts_raise(self) -> None:
        for bad in [-5, 2**63, 1.5, "12", True, [], {"x": 1}]:
            self.assertRaises(InvalidCount, tokens, {"a": bad}, "a")
        self.assertRaises(InvalidCount, tokens, {"d": "x"}, "d", "a")

    def test_has_count_means_reported(self) -> None:
        """A reported value of the wrong type still counts as reported (and is then invalid)."""
        self.assertTrue(has_count({"a": "12"}, "a"))
        self.assertFalse(has_count({"a": None}, "a"))
        self.assertFalse(has_count("a", "a"))


# Bodies each provider answers with; COUNT is where the invalid count goes.
CHAT = '{"model":"gpt-4o-mini","usage":{"prompt_tokens":COUNT,"completion_tokens":10}}'
CHAT_STREAM = (
    'data: {"model":"gpt-4o-mini","choices":[{"delta":{"content":"Hi"}}],"usage":null}\n\n'
    'data: {"model":"gpt-4o-mini","choices":[],"usage":'
    '{"prompt_tokens":19,"completion_tokens":COUNT}}\n\ndata: [DONE]\n\n'
)
MESSAGE = (
    '{"model":"claude-sonnet-4-5","usage":{"input_tokens":10,"output_tokens":5,'
    '"cache_read_input_tokens":COUNT}}'
)
GEMINI = (
    '{"modelVersion":"gemini-2.5-flash","candidates":[{"finishReason":"STOP"}],'
    '"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":COUNT}}'
)
PROVIDER_ANSWERS = [
    ("openai", "/v1/chat/completions", "application/json", CHAT),
    ("openai", "/v1/chat/completions", "text/event-stream", CHAT_STREAM),
    ("anthropic", "/v1/messages", "application/json", MESSAGE),
    ("gemini", "/v1beta/models/gemini-2.5-flash:generateContent", "application/json", GEMINI),
]


class ParserTests(SynchronousTestCase):
    """make_usage_parser's parsers only ever return counts PostgreSQL can store."""

    def usage(self, provider: str, path: str, content_type: str, body: str) -> Usage:
        parser = make_usage_parser(
            provider, path, status_code=200, content_type=content_type, request_model="m"
        )
        parser.feed(body.encode())
        return parser.finish()

    def test_invalid_counts_give_invalid_usage(self) -> None:
        for provider, path, content_type, body in PROVIDER_ANSWERS:
            self.assertEqual(
                self.usage(provider, path, content_type, body.replace("COUNT", "3")).usage_status,
                COMPLETE,
            )
            for count in INVALID_COUNTS:
                usage = self.usage(provider, path, content_type, body.replace("COUNT", count))
                self.assertEqual(usage.usage_status, INVALID_USAGE, (provider, count))
                self.assertEqual({getattr(usage, c) for c in TOKEN_COLUMNS}, {None})
                self.assertIsNotNone(usage.raw)
                self.assertNotEqual(usage.model, "m", "the provider's model is still read")

    def test_sums_beyond_bigint(self) -> None:
        """Counts each in range whose normalised total is not are invalid too."""
        half = str(2**62)
        body = MESSAGE.replace("COUNT", half).replace('"input_tokens":10', f'"input_tokens":{half}')
        usage = self.usage("anthropic", "/v1/messages", "application/json", body)
        self.assertEqual(usage.usage_status, INVALID_USAGE)

    def test_truncated_stream_with_invalid_counts(self) -> None:
        """A cut stream whose counts are invalid says invalid, not partial."""
        body = (
            "event: message_start\n"
            'data: {"type":"message_start","message":{"model":"claude-sonnet-4-5",'
            '"usage":{"input_tokens":-3,"output_tokens":1}}}\n\n'
        )
        usage = self.usage("anthropic", "/v1/messages", "text/event-stream", body)
        self.assertEqual(usage.usage_status, INVALID_USAGE)
        self.assertIsNone(usage.input_tokens)


class GatewayRowTests(GatewayTestCase):
    """Through a real gateway: every answered request has its row and its count."""

    async def send(self, body: Any, path: str = "/v1/chat/completions") -> Any:
        response, _ = await self.post(
            path, body, X_Majordomo_Key=self.key, Authorization="Bearer sk-test"
        )
        self.assertEqual(response.code, 200)
        return response

    def request_count(self) -> int:
        return support.run_sql("SELECT request_count FROM api_keys")[0][0]

    def test_request_model_with_nul_or_lone_surrogate(self) -> defer.Deferred[None]:
        """A model name PostgreSQL cannot hold is stored with the character replaced."""

        async def go() -> None:
            await self.send({"model": "gpt-4o-mini\x00x", "messages": []})
            await self.send(b'{"model": "gpt-\\ud800mini", "messages": []}')
            rows = await self.rows(2)
            self.assertEqual(
                [row["model_requested"] for row in rows],
                [f"gpt-4o-mini{REPLACED}x", f"gpt-{REPLACED}mini"],
            )
            self.assertEqual([row["input_tokens"] for row in rows], [19, 19])
            self.assertEqual(self.request_count(), 2)

        return support.as_deferred(go())

    def test_upstream_strings_cleaned(self) -> defer.Deferred[None]:
        """NUL, lone surrogates and NaN from the provider: the row is stored, cleaned."""

        async def go() -> None:
            self.upstream.queue = [
                support.Canned(
                    chunks=[
                        b'{"model":"gpt-4o-mini\\u0000","service_tier":"\\udc00default",'
                        b'"usage":{"prompt_tokens":19,"completion_tokens":10,'
                        b'"k\\u0000":"v\\ud800","odd":{"\\udfff":[NaN,Infinity,1e400]}}}'
                    ]
                )
            ]
            response = await self.send({"model": "gpt-4o-mini", "messages": []})
            (row,) = await self.rows()
            request_id = response.headers.getRawHeaders(b"x-majordomo-request-id")[0].decode()
            self.assertEqual(row["id"], request_id)
            self.assertEqual(row["model"], f"gpt-4o-mini{REPLACED}")
            self.assertEqual(row["service_tier"], f"{REPLACED}default")
            self.assertEqual(
                row["raw_usage"],
                {
                    "prompt_tokens": 19,
                    "completion_tokens": 10,
                    f"k{REPLACED}": f"v{REPLACED}",
                    "odd": {REPLACED: [None, None, None]},
                },
            )
            self.assertEqual((row["usage_status"], row["input_tokens"]), (COMPLETE, 19))
            self.assertEqual(self.request_count(), 1)

        return support.as_deferred(go())

    def test_invalid_upstream_counts(self) -> defer.Deferred[None]:
        """
        Counts of 2**63, -5, 10**30, 1.5, "12" and true: NULL counts, status
        invalid_usage (never 0 and complete), no cost, for every provider.
        """

        async def go() -> None:
            cases = [(a, count) for a in PROVIDER_ANSWERS for count in INVALID_COUNTS]
            for (_, path, content_type, body), count in cases:
                self.upstream.queue = [
                    support.Canned(
                        headers={"Content-Type": content_type},
                        chunks=[body.replace("COUNT", count).encode()],
                    )
                ]
                await self.send({"model": "m", "messages": []}, path)
            rows = await self.rows(len(cases))
            for row, ((provider, *_), count) in zip(rows, cases, strict=True):
                self.assertEqual(row["usage_status"], INVALID_USAGE, (provider, count))
                self.assertEqual({row[c] for c in TOKEN_COLUMNS}, {None}, (provider, count))
                self.assertEqual((row["input_cost"], row["total_cost"]), (None, None))
                self.assertIsNotNone(row["raw_usage"])
            self.assertEqual(self.request_count(), len(cases))

        return support.as_deferred(go())

    def test_refused_row_stored_reduced(self) -> defer.Deferred[None]:
        """
        A row PostgreSQL refuses for a reason no check foresaw (here a
        constraint the operator added) is stored reduced: its id, key,
        status and why, none of the caller's strings; the key's count moves.
        """

        async def go() -> None:
            support.run_sql(
                "ALTER TABLE llm_requests ADD CONSTRAINT test_refuse_me "
                "CHECK (model_requested IS DISTINCT FROM 'refuse-me')"
            )
            self.addCleanup(
                support.run_sql, "ALTER TABLE llm_requests DROP CONSTRAINT test_refuse_me"
            )
            response = await self.send({"model": "refuse-me", "messages": []})
            (row,) = await self.rows()
            request_id = response.headers.getRawHeaders(b"x-majordomo-request-id")[0].decode()
            self.assertEqual(row["id"], request_id)
            self.assertEqual(row["majordomo_api_key_id"], self.key_id)
            self.assertEqual((row["provider"], row["method"]), ("openai", "POST"))
            self.assertEqual(row["status_code"], 200)
            self.assertIsNone(row["model_requested"])
            self.assertEqual(row["path"], "")
            self.assertIn("reduced", row["error_message"])
            self.assertIn("23514", row["error_message"])  # check_violation
            self.assertEqual(self.request_count(), 1)

        return support.as_deferred(go())


class ReducedRowTests(LogWriterTestCase):
    """The writer's fallback for a row PostgreSQL refuses."""

    def refuse(self, check: str) -> None:
        support.run_sql(f"ALTER TABLE llm_requests ADD CONSTRAINT test_refuse CHECK ({check})")
        self.addCleanup(support.run_sql, "ALTER TABLE llm_requests DROP CONSTRAINT test_refuse")

    def test_reduced_rows_counted_once(self) -> defer.Deferred[None]:
        """
        In a batch, a refused row is stored reduced and the others whole; a
        replay of the same batch changes nothing; nothing goes to rejected.jsonl.
        """

        async def go() -> None:
            self.refuse("model IS DISTINCT FROM 'refused'")
            spool_dir = self.mktemp()
            writer = self.writer(batch_size=100, flush_interval=3600, spool_dir=spool_dir)
            good = self.records(2)
            bad = {**answered(datetime(2025, 11, 26, 12, 0, 0, 500000, UTC), self.key_id)}
            bad["model"] = "refused"
            for record in (good[0], bad, good[1]):
                writer.add(record)
            await writer.flush()
            for record in (good[0], bad, good[1]):  # replayed, as after a crash
                writer.add(record)
            await writer.flush()
            self.assertEqual(stored_ids(), sorted([bad["id"]] + [r["id"] for r in good]))
            self.assertEqual(support.run_sql("SELECT request_count FROM api_keys"), [(3,)])
            (reduced,) = support.run_sql(
                "SELECT model, usage_status, input_tokens FROM llm_requests WHERE id = %s",
                (bad["id"],),
            )
            self.assertEqual(reduced, (None, "unknown", None))
            self.assertFalse(os.path.exists(os.path.join(spool_dir, "rejected.jsonl")))

        return support.as_deferred(go())

    def test_reduced_row_counted_for_its_proxy_key(self) -> defer.Deferred[None]:
        """
        A refused row that came through a proxy key is stored reduced with
        its proxy_key_id, and the proxy key's request_count moves with it.
        """

        async def go() -> None:
            self.refuse("model IS DISTINCT FROM 'refused'")
            proxy_key_id = str(uuid.uuid4())
            support.run_sql(
                "INSERT INTO proxy_keys (id, majordomo_api_key_id, name, key_hash) "
                "VALUES (%s, %s, 'pk', %s)",
                (proxy_key_id, self.key_id, "0" * 64),
            )
            writer = self.writer(batch_size=100, flush_interval=3600)
            bad = answered(datetime(2025, 11, 26, 12, 0, 2, 500000, UTC), self.key_id)
            bad.update(model="refused", proxy_key_id=proxy_key_id)
            writer.add(bad)
            await writer.flush()
            self.assertEqual(
                support.run_sql("SELECT proxy_key_id::text, model, usage_status FROM llm_requests"),
                [(proxy_key_id, None, "unknown")],
            )
            self.assertEqual(support.run_sql("SELECT request_count FROM proxy_keys"), [(1,)])

        return support.as_deferred(go())

    def test_refused_even_reduced_kept_aside(self) -> defer.Deferred[None]:
        """Only a row refused even in its reduced form goes to rejected.jsonl."""

        async def go() -> None:
            self.refuse("method <> 'REFUSED'")
            spool_dir = self.mktemp()
            writer = self.writer(batch_size=100, flush_interval=3600, spool_dir=spool_dir)
            (good,) = self.records(1)
            bad = {**answered(datetime(2025, 11, 26, 12, 0, 1, 500000, UTC), self.key_id)}
            bad["method"] = "REFUSED"
            writer.add(bad)
            writer.add(good)
            await writer.flush()
            self.assertEqual(stored_ids(), [good["id"]])
            with open(os.path.join(spool_dir, "rejected.jsonl"), encoding="utf-8") as f:
                (rejected,) = [json.loads(line) for line in f]
            self.assertEqual(rejected["record"]["id"], bad["id"])
            self.assertIn("test_refuse", rejected["error"])
            self.assertEqual(writer.queued, 0)

        return support.as_deferred(go())
