"""
The in-memory fakes of L{tests.fakes}, each used through the Protocol it
stands in for: mypy checks this module, so a fake that no longer satisfies
its Protocol fails C{make lint}, and these tests check that it behaves as one.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from majordomo.bodies.document import Exchange
from majordomo.bodies.store import BodyStore
from majordomo.db.keys import ActiveKey, hash_key
from majordomo.ledger.writer import RecordSink
from majordomo.pricing import PriceBook, PriceSource
from majordomo.usage import COMPLETE, Usage
from majordomo.web.admission import Authenticate
from tests.fakes import FixedPrices, MemoryBodyStore, MemoryKeys, MemoryRecordSink


class FakeTests(SynchronousTestCase):
    def test_record_sink(self) -> None:
        """The records added are kept in order and can be picked by their fields."""
        fake = MemoryRecordSink()
        sink: RecordSink = fake
        sink.add({"id": 1, "status_code": 200})
        self.assertEqual(fake.only(), {"id": 1, "status_code": 200})
        sink.add({"id": 2, "status_code": 502})
        self.assertRaises(AssertionError, fake.only)
        self.assertEqual(fake.where(status_code=502), [{"id": 2, "status_code": 502}])
        self.assertEqual(fake.where(provider="openai"), [])
        self.assertEqual([r["id"] for r in fake.records], [1, 2])

    def test_fixed_prices(self) -> None:
        """The book given is the book in force; by default nothing is priced."""
        book = PriceBook({})
        prices: PriceSource = FixedPrices(book)
        self.assertIs(prices.book, book)
        usage = Usage(COMPLETE, model="gpt-4o", input_tokens=10, output_tokens=5)
        self.assertFalse(FixedPrices().book.cost("openai", usage).priced)

    def test_body_store(self) -> None:
        """Every exchange is kept; each row gets the configured columns."""
        fake = MemoryBodyStore({"s3_key": "memory"})
        bodies: BodyStore = fake
        bodies.startService()
        exchange = Exchange(
            request_id="r1",
            key_id="k1",
            arrived=1.0,
            method="POST",
            path="/v1/chat/completions",
            request_headers=[],
            request_body=b"{}",
            status_code=200,
            response_headers=[],
            response_body=b"{}",
        )
        self.assertEqual(bodies.store(exchange), {"s3_key": "memory"})
        self.assertEqual(fake.exchanges, [exchange])
        self.assertEqual((bodies.pending, bodies.failures), (0, 0))
        self.assertIsNone(bodies.stopService())
        self.assertFalse(fake.running)

    def test_keys(self) -> None:
        """A key added is found by its hash; an unknown one is None; down, lookups fail."""
        keys = MemoryKeys()
        keys.add("md-one", "id-1")
        authenticate: Authenticate = keys.authenticate
        self.assertEqual(self.successResultOf(authenticate(hash_key("md-one"))), ActiveKey("id-1"))
        self.assertIsNone(self.successResultOf(authenticate(hash_key("md-two"))))
        keys.down = True
        self.failureResultOf(authenticate(hash_key("md-one")), RuntimeError)
