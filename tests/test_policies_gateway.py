"""
Key policies through a running gateway: model rules, budgets and rate limits
refuse in the caller's provider format with a row and a metric, budgets stop
at their limit, and the spent counters agree with the rows.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from majordomo.policy.estimate import estimate_cost
from majordomo.policy.store import PolicyStore
from tests import support
from tests.gateway_case import GatewayTestCase
from tests.test_streaming import ManualStream, hang_up_mid_stream

MODEL = "gpt-4o-mini-2024-07-18"


def chat(max_tokens: int = 50, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hi"}],
    }


class PolicyGatewayTests(GatewayTestCase):
    async def set_policy(self, **changes: Any) -> None:
        await PolicyStore(self.gateway.db).change(self.key_id, changes)
        # The NOTIFY reaches the key cache; the next request reads the new policy.
        await support.sleep(0.3)

    async def call(
        self, body: Any = None, path: str = "/v1/chat/completions", **headers: str
    ) -> Any:
        response, content = await self.post(
            path, body or chat(), X_Majordomo_Key=self.key, **headers
        )
        return response, json.loads(content) if content else None

    def metric(self, rule: str) -> float:
        value = self.gateway.metrics.registry.get_sample_value(
            "majordomo_policy_refusals_total", {"rule": rule}
        )
        return value or 0.0

    async def test_model_rules(self) -> None:
        await self.set_policy(
            allow_models=("gpt-4o*", "claude-*-haiku-*"), deny_models=("gpt-4o-mini*",)
        )
        response, body = await self.call(chat(model="gpt-4o-mini"))
        self.assertEqual(response.code, 403)
        self.assertEqual(body["error"]["code"], "model_not_allowed")
        (refusal_id,) = response.headers.getRawHeaders("x-majordomo-request-id")
        response, body = await self.call(chat(model="o3"))
        self.assertEqual(response.code, 403)
        self.assertIn("not among", body["error"]["message"])
        response, _ = await self.call(chat(model="GPT-4o"))
        self.assertEqual(response.code, 200)
        self.assertEqual(len(self.upstream.received), 1)  # refused requests are never forwarded
        rows = await self.rows(3)
        refused = [r for r in rows if r["status_code"] == 403]
        self.assertEqual(len(refused), 2)
        self.assertIn(refusal_id, [r["id"] for r in refused])  # the refusal names its row
        for row in refused:
            self.assertTrue(row["error_message"].startswith("model_not_allowed: "))
            self.assertEqual(Decimal(str(row["total_cost"])), 0)
        self.assertEqual(self.metric("model_not_allowed"), 2)

    async def test_anthropic_format_refusal(self) -> None:
        await self.set_policy(deny_models=("claude-opus-*",))
        response, body = await self.call(
            {"model": "claude-opus-4-1", "max_tokens": 10, "messages": []}, path="/v1/messages"
        )
        self.assertEqual(response.code, 403)
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "permission_error")

    async def test_unpriced_model_with_a_budget(self) -> None:
        await self.set_policy(budget_usd=Decimal("5"), budget_period="day")
        response, body = await self.call(chat(model="no-such-model-xyz"))
        self.assertEqual(response.code, 403)
        self.assertEqual(body["error"]["code"], "model_not_priced")
        await self.set_policy(allow_unpriced=True)
        response, _ = await self.call(chat(model="no-such-model-xyz"))
        self.assertEqual(response.code, 200)

    async def test_budget_stops_at_its_limit(self) -> None:
        # Each answer uses all of its 4000 output tokens: 19 x 0.15 + 4000 x 0.60
        # = 2,402.85 micro-USD.  The estimate also counts the body's bytes and
        # the provider allowance as input, at the dearest tier's prices.
        self.upstream.default = support.Canned(chunks=[support.chat_completion(MODEL, 19, 4000)])
        body = chat(max_tokens=4000)
        estimate = self.estimate(body)
        budget = Decimal("0.02")
        await self.set_policy(budget_usd=budget, budget_period="day")
        codes = []
        for _ in range(12):
            response, answer = await self.call(body)
            codes.append(response.code)
            if response.code == 429:
                self.assertEqual(answer["error"]["code"], "budget_exceeded")
                self.assertIsNotNone(response.headers.getRawHeaders("retry-after"))
        first_refusal = codes.index(429)
        self.assertEqual(set(codes[first_refusal:]), {429})  # never admitted again
        rows = await self.rows(12)
        spent = sum(Decimal(str(r["total_cost"])) for r in rows)
        self.assertLessEqual(spent, budget)
        self.assertGreater(spent, budget - estimate)  # stops within one request of the limit
        counter = support.run_sql(
            "SELECT spent FROM policy_windows WHERE majordomo_api_key_id = %s AND kind = 'day'",
            (self.key_id,),
        )
        self.assertEqual(counter[0][0], spent)
        self.assertEqual(self.metric("budget_exceeded"), 12 - first_refusal)

    def estimate(self, body: dict[str, Any]) -> Decimal:
        """What admission reserves for this body (see majordomo.policy.estimate)."""
        price = self.gateway.pricing.book.lookup("openai", body["model"])
        assert price is not None
        size = len(json.dumps(body).encode())
        found = estimate_cost("openai", body["model"], size, body, price.price)
        assert found is not None
        return found.cost

    async def test_rate_limit(self) -> None:
        await self.set_policy(rpm=5)
        codes = []
        for _ in range(8):
            response, body = await self.call()
            codes.append(response.code)
        self.assertEqual(codes[:5], [200] * 5)
        self.assertEqual(codes[5:], [429] * 3)
        self.assertEqual(body["error"]["code"], "rate_limit_exceeded")
        retry_after = int(response.headers.getRawHeaders("retry-after")[0])
        self.assertTrue(1 <= retry_after <= 60)

    async def test_per_user_budget(self) -> None:
        self.upstream.default = support.Canned(chunks=[support.chat_completion(MODEL, 19, 4000)])
        await self.set_policy(
            budget_usd=Decimal("0.01"), budget_period="month", per_metadata="user-id"
        )
        refused_at = {}
        for user in ("alice", "bob"):
            for n in range(10):
                response, _ = await self.call(chat(max_tokens=4000), X_Majordomo_User_Id=user)
                if response.code == 429:
                    refused_at[user] = n
                    break
        self.assertEqual(set(refused_at), {"alice", "bob"})  # each has a budget of their own
        self.assertEqual(refused_at["alice"], refused_at["bob"])
        self.assertGreater(refused_at["alice"], 1)
        rows = await self.rows(sum(refused_at.values()) + 2)
        buckets = dict(
            support.run_sql(
                "SELECT bucket, spent FROM policy_windows WHERE majordomo_api_key_id = %s",
                (self.key_id,),
            )
        )
        for user in ("alice", "bob"):
            spent = sum(
                Decimal(str(r["total_cost"]))
                for r in rows
                if r["raw_metadata"].get("User-Id") == user
            )
            self.assertEqual(buckets[user], spent)

    async def test_clearing_applies_at_once(self) -> None:
        await self.set_policy(deny_models=("gpt-*",))
        response, _ = await self.call()
        self.assertEqual(response.code, 403)
        await PolicyStore(self.gateway.db).clear(self.key_id, set())
        await support.sleep(0.3)
        response, _ = await self.call()
        self.assertEqual(response.code, 200)

    async def test_hanging_up_mid_stream_is_no_way_around_a_budget(self) -> None:
        """
        A client that hangs up before a stream's usage arrives: the provider
        billed what it generated, which nobody knows, so the request counts
        its reservation (the row's budget_cost), not nothing.
        """
        await self.set_policy(budget_usd=Decimal("1"), budget_period="day")
        upstream = ManualStream()
        self.use_upstream(upstream)
        body = {**chat(max_tokens=1000, model="gpt-4o"), "stream": True}
        await hang_up_mid_stream(self, upstream, body)
        await upstream.lost
        (row,) = await self.rows()
        self.assertIsNone(row["total_cost"])
        self.assertEqual(Decimal(str(row["budget_cost"])), self.estimate(body))
        counter = support.run_sql(
            "SELECT spent FROM policy_windows WHERE majordomo_api_key_id = %s AND kind = 'day'",
            (self.key_id,),
        )
        self.assertEqual(counter[0][0], Decimal(str(row["budget_cost"])))
