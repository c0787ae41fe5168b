"""
Background Responses (C{"background": true}): an answer the model has not
finished, queued or in progress with C{"usage": null}, is recorded as
C{pending_background} with every count and cost unknown, never as
C{unparseable} and never as 0.  Driven by our vectors 180-189 in
tests/vectors, through the parsers and through a running gateway.
"""

from __future__ import annotations

import glob
import os
import random
from typing import Any, cast

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from majordomo.pricing import PriceBook
from majordomo.usage import (
    COMPLETE,
    MISSING_STREAM_TRUNCATED,
    PENDING_BACKGROUND,
    UNPARSEABLE,
    Usage,
)
from majordomo.usage.openai import usage_from_body
from tests import support, test_vectors_gateway
from tests.gateway_case import GatewayTestCase
from tests.test_usage_parsers import SSE, USAGE_KEYS, parser_for, run, sse
from tests.vectors import TOKEN_FIELDS, load_vector, vector_overrides

OUR_VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")


def background_vectors() -> list[tuple[str, dict[str, Any]]]:
    """Our background-Responses vectors (180-189), by file name; none is an error."""
    paths = sorted(glob.glob(os.path.join(OUR_VECTORS, "18[0-9]_*.json")))
    if not paths:
        raise AssertionError(f"no background vectors in {OUR_VECTORS}")
    return [(os.path.basename(path), load_vector(path)) for path in paths]


def chunkings(body: bytes) -> dict[str, list[int] | None]:
    """The ways the shared vector tests cut a body: whole, per event, per byte, at random."""
    rng = random.Random(180)
    return {
        "whole": None,
        "events": [len(event) + 2 for event in body.split(b"\n\n")[:-1]],
        "bytes": [1] * len(body),
        "random": [rng.randint(1, 97) for _ in range(len(body) // 40)],
    }


class BackgroundVectorTests(SynchronousTestCase):
    """Each background vector gives exactly its expected usage, however it is chunked."""

    def test_vectors(self) -> None:
        """
        Every count is None (stored NULL), the status is pending_background,
        the model and service tier are the ones the answer reports.
        """
        vectors = background_vectors()
        self.assertGreaterEqual(len(vectors), 3)
        for name, vector in vectors:
            self.assertEqual(vector["expected"]["usage_status"], PENDING_BACKGROUND, name)
            body = vector["response_body"].encode("utf-8")
            for how, chunks in chunkings(body).items():
                usage = run(parser_for(name, vector), body, chunks)
                expected = vector["expected"]
                for key in USAGE_KEYS:
                    if key in expected:
                        self.assertEqual(getattr(usage, key), expected[key], f"{name} {how} {key}")
                self.assertEqual(usage.service_tier, expected["service_tier"], f"{name} {how}")
                for count in TOKEN_FIELDS:
                    self.assertIsNone(getattr(usage, count), f"{name} {how} {count}")

    def test_cut_stream_too(self) -> None:
        """A background stream is pending whether it ended cleanly or was cut."""
        for name, vector in background_vectors():
            body = vector["response_body"].encode("utf-8")
            usage = run(parser_for(name, vector), body, complete=False)
            if vector["response_content_type"].startswith("text/event-stream"):
                self.assertEqual(usage.usage_status, PENDING_BACKGROUND, name)

    def test_no_cost(self) -> None:
        """
        With the vector's own prices loaded, the cost is unknown, not 0, though
        the model is priced (the row still names the price it would use).
        """
        for name, vector in background_vectors():
            book = PriceBook.bundled().with_overrides(vector_overrides(vector["prices_used"]))
            usage = run(parser_for(name, vector), vector["response_body"].encode("utf-8"))
            cost = book.cost(vector["provider"], usage)
            self.assertEqual((cost.input_cost, cost.output_cost, cost.total_cost), (None,) * 3)
            self.assertTrue(cost.priced, name)


def responses_body(**members: Any) -> Any:
    """A Responses API object: the members the parser reads, then C{members}."""
    body: dict[str, Any] = {"object": "response", "model": "gpt-5-2025-08-07", "background": True}
    body.update(members)
    return body


FINAL_USAGE = {
    "input_tokens": 40000,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 5000,
    "output_tokens_details": {"reasoning_tokens": 3000},
    "total_tokens": 45000,
}


class NotPendingTests(SynchronousTestCase):
    """What pending_background must not swallow."""

    def test_finished_background_body(self) -> None:
        """A background Response fetched once completed is billed from its usage as usual."""
        usage = usage_from_body(responses_body(status="completed", usage=FINAL_USAGE), None)
        self.assertEqual((usage.usage_status, usage.input_tokens), (COMPLETE, 40000))

    def test_garbage_stays_unparseable(self) -> None:
        """A body that is no Response, or has no status, is still unparseable."""
        bodies: list[Any] = [[], "queued", {"model": "gpt-5"}, responses_body(status="completed")]
        for body in bodies:
            self.assertEqual(usage_from_body(body, "gpt-5").usage_status, UNPARSEABLE, body)

    def test_queued_with_usage_object(self) -> None:
        """A queued body whose usage is an object, not null, is not taken as pending."""
        body = responses_body(status="queued", usage={"foo": 1})
        self.assertEqual(usage_from_body(body, None).usage_status, UNPARSEABLE)

    def test_finished_background_stream(self) -> None:
        """A background stream that reaches response.completed has complete usage."""
        queued = responses_body(status="queued", usage=None, service_tier="auto")
        done = responses_body(status="completed", usage=FINAL_USAGE, service_tier="flex")
        body = sse(
            ("response.created", {"type": "response.created", "response": queued}),
            ("response.queued", {"type": "response.queued", "response": queued}),
            ("response.completed", {"type": "response.completed", "response": done}),
        )
        usage = run(parser_for("x", stream_vector()), body)
        self.assertEqual(
            (usage.usage_status, usage.output_tokens, usage.service_tier), (COMPLETE, 5000, "flex")
        )

    def test_foreground_stream_cut(self) -> None:
        """A stream without background, cut before its usage, is still missing_stream_truncated."""
        started = responses_body(status="in_progress", usage=None, background=False)
        body = sse(("response.created", {"type": "response.created", "response": started}))
        usage: Usage = run(parser_for("x", stream_vector()), body, complete=False)
        self.assertEqual(usage.usage_status, MISSING_STREAM_TRUNCATED)


def stream_vector() -> dict[str, Any]:
    """Just enough of a vector for L{parser_for}: a streamed OpenAI Responses request."""
    return {
        "provider": "openai",
        "request_path": "/v1/responses",
        "response_status": 200,
        "response_content_type": SSE,
        "request_body": {"model": "gpt-5", "stream": True, "background": True},
    }


class BackgroundReplayTests(GatewayTestCase):
    """Each background vector through a running gateway into PostgreSQL."""

    # The shared replay, borrowed without its generated tests (imported as a
    # module so that trial does not collect them here too).
    replay = cast(Any, test_vectors_gateway.VectorReplayTests.replay)
    check = cast(Any, test_vectors_gateway.VectorReplayTests.check)

    def test_rows(self) -> defer.Deferred[None]:
        """
        The client gets the provider's exact bytes; the row says
        pending_background with NULL counts and NULL cost, and keeps the
        reported service tier and the price key it would be priced with.
        """

        async def go() -> None:
            for name, vector in background_vectors():
                support.run_sql("TRUNCATE llm_requests")
                self.upstream.received.clear()
                path = os.path.join(OUR_VECTORS, name)
                await self.check(path)
                (row,) = await self.rows()
                self.assertEqual(row["usage_status"], PENDING_BACKGROUND, name)
                self.assertEqual(row["service_tier"], vector["expected"]["service_tier"], name)
                self.assertEqual(row["pricing_key"], vector["prices_used"]["pricing_key"], name)
                for count in TOKEN_FIELDS:
                    self.assertIsNone(row[count], f"{name} {count}")
                self.assertIsNone(row["total_cost"], name)

        return support.as_deferred(go())
