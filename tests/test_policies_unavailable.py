"""
When a key's limits cannot be checked: PostgreSQL does not answer a lease
question (here: another transaction holds the budget window's row lock, so
the question waits past its timeout).  A gateway keeps admitting against the
share it already holds; once that is used up, `policies.when_unavailable`
decides: `deny` (the default) answers 503 policy_unavailable, `allow` lets
the request through, and its cost is still counted when its row is written.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import psycopg2

from majordomo.policy.store import PolicyStore
from tests import support
from tests.gateway_case import GatewayTestCase

MODEL = "gpt-4o-mini-2024-07-18"
BODY = {"model": "gpt-4o-mini", "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]}


class _RowLock:
    """Holds the row lock of one budget window in its own transaction until released."""

    def __init__(self, key_id: str) -> None:
        self._connection = psycopg2.connect(
            host=support.PG_HOST,
            port=support.PG_PORT,
            user=support.PG_USER,
            dbname=support.TEST_DATABASE,
        )
        with self._connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM policy_windows WHERE majordomo_api_key_id = %s FOR UPDATE",
                (key_id,),
            )

    def release(self) -> None:
        if not self._connection.closed:
            self._connection.rollback()
            self._connection.close()


class _Unavailable(GatewayTestCase):
    async def start_budget(self, budget: str) -> None:
        self.upstream.default = support.Canned(chunks=[support.chat_completion(MODEL, 19, 4000)])
        await PolicyStore(self.gateway.db).change(
            self.key_id, {"budget_usd": Decimal(budget), "budget_period": "day"}
        )
        await support.sleep(0.3)

    async def call(self) -> tuple[int, Any]:
        response, content = await self.post("/v1/chat/completions", BODY, X_Majordomo_Key=self.key)
        return response.code, json.loads(content)


class DenyWhenUnavailableTests(_Unavailable):
    async def test_share_then_deny(self) -> None:
        await self.start_budget("1.00")  # a first lease of 2% of it: $0.02, a few requests
        code, _ = await self.call()
        self.assertEqual(code, 200)
        lock = _RowLock(self.key_id)
        codes = []
        for _ in range(12):
            code, body = await self.call()
            codes.append(code)
            if code != 200:
                break
        # The share held covered some requests without PostgreSQL, then 503.
        self.assertGreater(codes.count(200), 0)
        self.assertEqual(codes[-1], 503)
        self.assertEqual(body["error"]["code"], "policy_unavailable")
        lock.release()
        await support.sleep(1.1)  # past the back-off after a question went unanswered
        code, _ = await self.call()
        self.assertEqual(code, 200)  # PostgreSQL answers again: leases resume


class AllowWhenUnavailableTests(_Unavailable):
    gateway_env = {"MAJORDOMO_POLICIES_WHEN_UNAVAILABLE": "allow"}

    async def test_allowed_and_still_counted(self) -> None:
        await self.start_budget("0.01")
        lock = _RowLock(self.key_id)  # no window row yet: nothing locked, lease questions work
        lock.release()
        code, _ = await self.call()
        self.assertEqual(code, 200)
        lock = _RowLock(self.key_id)
        codes = [(await self.call())[0] for _ in range(6)]
        lock.release()
        self.assertEqual(set(codes), {200})  # the budget ($0.01) is overrun while unchecked
        rows = await self.rows(7)
        spent = sum(Decimal(str(r["total_cost"])) for r in rows)
        self.assertGreater(spent, Decimal("0.01"))
        # ... but never uncounted: the window's spent is the rows' sum, and the next
        # request, checked again, is refused.
        await self.gateway.writer.flush()
        counter = support.run_sql(
            "SELECT spent FROM policy_windows WHERE majordomo_api_key_id = %s AND kind = 'day'",
            (self.key_id,),
        )
        self.assertEqual(counter[0][0], spent)
        await support.sleep(1.1)  # past the back-off after a question went unanswered
        code, body = await self.call()
        self.assertEqual((code, body["error"]["code"]), (429, "budget_exceeded"))
