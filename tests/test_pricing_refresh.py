"""
Tests for L{majordomo.pricing.refresh.PricingService}: refreshing the price book from a
remote source on a timer, and keeping the last good book when that fails.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from majordomo.pricing import PriceBook
from majordomo.pricing.prices import ModelPrice, PricingError
from majordomo.pricing.refresh import PricingService
from majordomo.pricing.sources import fetch_url

URL = "https://prices.example/current-v1.json"
BASE = PriceBook({"openai": {"gpt-4o": ModelPrice(input=Decimal("0.0000025"))}}, "bundled")


def llm_prices(day: str, gpt_4o_input: float) -> bytes:
    """An llm-prices current-v1 document pricing gpt-4o's input."""
    row = {
        "id": "gpt-4o",
        "vendor": "openai",
        "name": "GPT-4o",
        "input": gpt_4o_input,
        "output": 10,
    }
    return json.dumps({"updated_at": day, "prices": [row]}).encode()


class FakeFetch:
    """A fetch function answering from a script: bytes, an exception, or a Deferred."""

    def __init__(self, *answers: bytes | Exception | Deferred[bytes]) -> None:
        self.answers = list(answers)
        self.urls: list[str] = []

    def __call__(self, url: str) -> Deferred[bytes]:
        self.urls.append(url)
        answer = self.answers.pop(0)
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            if isinstance(answer, ZeroDivisionError):
                raise answer  # a fetch function that raises instead of failing
            return defer.fail(answer)
        return defer.succeed(answer)


def gpt_4o_input(service: PricingService) -> Decimal | None:
    """The input price of gpt-4o in the service's current book."""
    match = service.book.lookup("openai", "gpt-4o")
    assert match is not None
    return match.price.input


class PricingServiceTests(SynchronousTestCase):
    """The refresh loop of PricingService, driven by task.Clock."""

    def make(
        self, *answers: bytes | Exception | Deferred[bytes], overrides: dict[str, Any] | None = None
    ) -> tuple[PricingService, FakeFetch, task.Clock]:
        """A started service on a fake clock whose fetches answer C{answers}."""
        clock, fetch = task.Clock(), FakeFetch(*answers)
        service = PricingService(BASE, URL, 60, overrides, clock=clock, fetch=fetch)
        service.startService()
        self.addCleanup(service.stopService)
        return service, fetch, clock

    def test_refreshes_now_and_every_interval(self) -> None:
        """The remote table is fetched at start and every interval, and layered over the base."""
        service, fetch, clock = self.make(
            llm_prices("2026-08-05", 2), llm_prices("2026-08-06", 1.5)
        )
        self.assertEqual(fetch.urls, [URL])
        self.assertEqual(gpt_4o_input(service), Decimal("0.000002"))
        self.assertEqual(service.book.remote_version, "llm-prices 2026-08-05")
        clock.advance(60)
        self.assertEqual(fetch.urls, [URL, URL])
        self.assertEqual(gpt_4o_input(service), Decimal("0.0000015"))

    def test_malformed_keeps_last_good(self) -> None:
        """Unusable data keeps the last good book (the same object) and the loop goes on."""
        service, fetch, clock = self.make(
            llm_prices("2026-08-05", 2), b"<html>oops", llm_prices("2026-08-06", 1)
        )
        good = service.book
        clock.advance(60)
        self.assertIs(service.book, good)
        clock.advance(60)
        self.assertEqual(gpt_4o_input(service), Decimal("0.000001"))

    def test_failed_fetch_keeps_last_good(self) -> None:
        """
        A failed or raising fetch is logged as one warning line, keeps the book,
        and never stops the loop.
        """
        with capturedLogs() as events:
            service, fetch, clock = self.make(
                ConnectionRefusedError(), ZeroDivisionError(), llm_prices("2026-08-05", 2)
            )
            self.assertIs(service.book, BASE)
            clock.advance(60)
            self.assertIs(service.book, BASE)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 2)
        self.assertIn("keeping the last good table", formatEvent(warnings[0]))
        clock.advance(60)
        self.assertEqual(gpt_4o_input(service), Decimal("0.000002"))

    def test_overrides_win(self) -> None:
        """Overrides given to the service stay on top of every refreshed table."""
        service, fetch, clock = self.make(
            llm_prices("2026-08-05", 2), overrides={"gpt-4o": {"input": 7}}
        )
        self.assertEqual(gpt_4o_input(service), Decimal("0.000007"))
        self.assertEqual(service.book.remote_version, "llm-prices 2026-08-05")

    def test_litellm_shape_version(self) -> None:
        """A LiteLLM-shaped table, which carries no date, is labelled with the fetch date."""
        table = {"gpt-4o": {"litellm_provider": "openai", "input_cost_per_token": 3e-06}}
        service, fetch, clock = self.make(json.dumps(table).encode())
        self.assertEqual(service.book.remote_version, "litellm-remote 1970-01-01")
        self.assertEqual(gpt_4o_input(service), Decimal("0.000003"))

    def test_stop(self) -> None:
        """After stopService no more fetches happen."""
        service, fetch, clock = self.make(llm_prices("2026-08-05", 2))
        service.stopService()
        clock.advance(600)
        self.assertEqual(fetch.urls, [URL])

    def test_slow_fetch(self) -> None:
        """A fetch still running when the interval passes is not overlapped by another one."""
        pending: Deferred[bytes] = Deferred()
        service, fetch, clock = self.make(pending, llm_prices("2026-08-06", 1))
        clock.advance(120)
        self.assertEqual(fetch.urls, [URL])
        pending.callback(llm_prices("2026-08-05", 2))
        self.assertEqual(gpt_4o_input(service), Decimal("0.000002"))

    def test_stop_during_fetch(self) -> None:
        """Stopping while a fetch is in flight lets it finish quietly and schedules no more."""
        pending: Deferred[bytes] = Deferred()
        service, fetch, clock = self.make(pending)
        service.stopService()
        pending.callback(llm_prices("2026-08-05", 2))
        clock.advance(600)
        self.assertEqual(fetch.urls, [URL])

    def test_no_remote(self) -> None:
        """Without a remote URL the service only holds the base book."""
        fetch = FakeFetch()
        service = PricingService(BASE, None, 60, clock=task.Clock(), fetch=fetch)
        service.startService()
        self.assertIs(service.book, BASE)
        self.assertEqual(fetch.urls, [])
        service.stopService()


class Prices(Resource):
    """A fake price server: 200 with a body, or the given error status."""

    isLeaf = True

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__()
        self.status, self.body = status, body

    def render_GET(self, request: Request) -> bytes:
        request.setResponseCode(self.status)
        return self.body


class FetchURLTests(SynchronousTestCase):
    """fetch_url, against an in-memory HTTP server."""

    def test_body(self) -> None:
        """A 200 answer fires with its body."""
        client = StubTreq(Prices(200, b"prices"))
        self.assertEqual(self.successResultOf(fetch_url(URL, client=client)), b"prices")

    def test_error_status(self) -> None:
        """Any other status fails with a PricingError naming it."""
        client = StubTreq(Prices(503, b"busy"))
        failure: Failure = self.failureResultOf(fetch_url(URL, client=client), PricingError)
        self.assertIn("503", str(failure.value))
