"""
The gateway end to end, in this process: real PostgreSQL, a fake OpenAI served
by a real HTTP server on loopback, requests over real TCP.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import treq
from twisted.internet import defer, reactor, threads
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from majordomo.db.keys import KeyStore
from tests import support
from tests.gateway_case import GatewayTestCase
from tests.guide import GUIDE_BY_KEY, GUIDE_BY_MODEL, GUIDE_DAILY

GUIDE_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


class GuideTests(GatewayTestCase):
    """The getting-started guide's Steps 6 and 7, and its SQL."""

    async def _step6(self) -> tuple[Any, bytes]:
        return await self.post(
            "/v1/chat/completions",
            GUIDE_BODY,
            X_Majordomo_Key=self.key,
            Authorization="Bearer sk-test-provider-key",
        )

    def test_step6_request_is_proxied_and_logged(self) -> defer.Deferred[None]:
        """
        The guide's curl request gets the provider's answer unchanged, and
        Step 7's query finds the row with its tokens and exact cost.
        """

        async def go() -> None:
            response, body = await self._step6()
            self.assertEqual(response.code, 200)
            self.assertEqual(body, support.chat_completion("gpt-4o-mini-2024-07-18", 19, 10))
            await self.rows()
            step7 = support.run_sql(
                "SELECT model, input_tokens, output_tokens, total_cost "
                "FROM llm_requests ORDER BY created_at DESC LIMIT 1;"
            )
            # gpt-4o-mini-2024-07-18: $0.15/M in, $0.60/M out (bundled LiteLLM table).
            self.assertEqual(step7, [("gpt-4o-mini-2024-07-18", 19, 10, Decimal("0.00000885"))])

        return support.as_deferred(go())

    def test_row_carries_request_facts(self) -> defer.Deferred[None]:
        """
        The row's id is the X-Majordomo-Request-Id header; it records the key,
        the provider key's hash (never the key), status, timings and arrival time.
        """

        async def go() -> None:
            before = reactor.seconds()
            response, _ = await self._step6()
            (row,) = await self.rows()
            request_id = response.headers.getRawHeaders(b"x-majordomo-request-id")[0].decode()
            self.assertEqual(row["id"], request_id)
            self.assertEqual(row["majordomo_api_key_id"], self.key_id)
            self.assertEqual(row["provider"], "openai")
            self.assertEqual(row["status_code"], 200)
            self.assertEqual(row["usage_status"], "complete")
            self.assertEqual(row["model_requested"], "gpt-4o-mini")
            self.assertEqual(row["path"], "/v1/chat/completions")
            self.assertEqual(row["pricing_key"], "gpt-4o-mini-2024-07-18")
            self.assertFalse(row["stream"])
            self.assertGreater(row["duration_ms"], 0)
            self.assertLessEqual(row["ttfb_ms"], row["duration_ms"])
            import hashlib

            self.assertEqual(
                row["provider_api_key_hash"],
                hashlib.sha256(b"sk-test-provider-key").hexdigest(),
            )
            self.assertNotIn("sk-test-provider-key", json.dumps(row))
            self.assertNotIn(self.key, json.dumps(row))
            created = support.run_sql("SELECT extract(epoch FROM created_at) FROM llm_requests")[0][
                0
            ]
            self.assertLess(abs(float(created) - before), 2.0)
            count, last_used = support.run_sql(
                "SELECT request_count, last_used_at IS NOT NULL FROM api_keys WHERE id = %s",
                (self.key_id,),
            )[0]
            self.assertEqual((count, last_used), (1, True))

        return support.as_deferred(go())

    def test_one_log_line_per_request(self) -> defer.Deferred[None]:
        """
        Each request logs one line with what it was, its tokens, cost and
        time, and carries the same facts as fields (for JSON logs); the
        provider key never appears.
        """

        async def go() -> None:
            with capturedLogs() as events:
                response, _ = await self._step6()
            [event] = [e for e in events if "request_line" in e]
            self.assertRegex(
                formatEvent(event),
                r"^POST /v1/chat/completions 200 gpt-4o-mini-2024-07-18 in=19 out=10 "
                r"cost=0\.00000885 \d+ms$",
            )
            self.assertEqual(
                event["id"], response.headers.getRawHeaders("x-majordomo-request-id")[0]
            )
            self.assertEqual((event["input_tokens"], event["usage_status"]), (19, "complete"))
            self.assertNotIn("sk-test-provider-key", repr(event))

        return support.as_deferred(go())

    def test_guide_queries(self) -> defer.Deferred[None]:
        """
        Every SQL query in the guide runs on the rows the gateway wrote and
        returns the expected groups and sums.
        """

        async def go() -> None:
            self.upstream.queue = [
                support.Canned(chunks=[support.chat_completion("gpt-4o-mini-2024-07-18", 19, 10)]),
                support.Canned(chunks=[support.chat_completion("gpt-4o-mini-2024-07-18", 100, 50)]),
                support.Canned(chunks=[support.chat_completion("gpt-4o-2024-08-06", 1000, 100)]),
            ]
            for user in ("user_123", "user_123", "user_456"):
                await self.post(
                    "/v1/chat/completions",
                    GUIDE_BODY,
                    X_Majordomo_Key=self.key,
                    X_Majordomo_User_Id=user,
                    Authorization="Bearer sk-x",
                )
            await self.rows(3)
            by_model = support.run_sql(GUIDE_BY_MODEL)
            self.assertEqual(
                by_model,
                [
                    # 1000 x $2.50/M + 100 x $10/M
                    ("gpt-4o-2024-08-06", 1, 1000, 100, Decimal("0.0035")),
                    # 119 x $0.15/M + 60 x $0.60/M
                    ("gpt-4o-mini-2024-07-18", 2, 119, 60, Decimal("0.00005385")),
                ],
            )
            daily = support.run_sql(GUIDE_DAILY)
            self.assertEqual([(r[1], r[2]) for r in daily], [(3, Decimal("0.00355385"))])
            by_key = support.run_sql(GUIDE_BY_KEY)
            self.assertEqual(by_key, [("Development", 3, Decimal("0.00355385"))])
            self.assertEqual(support.run_sql("SELECT request_count FROM api_keys"), [(3,)])

        return support.as_deferred(go())

    def test_openai_sdk_through_gateway(self) -> defer.Deferred[None]:
        """
        The official openai Python SDK, configured exactly as in the guide, gets
        its completion through the gateway, and the row is written.
        """

        async def go() -> None:
            from openai import OpenAI

            client = OpenAI(
                base_url=self.url + "/v1",
                api_key="your-openai-api-key",
                default_headers={"X-Majordomo-Key": self.key},
                max_retries=0,
            )
            self.addCleanup(threads.deferToThread, client.close)
            response = await threads.deferToThread(
                client.chat.completions.create,
                model="gpt-4o",
                messages=[{"role": "user", "content": "Hello!"}],
            )
            self.assertEqual(response.choices[0].message.content, "Hello!")
            self.assertEqual(response.usage.prompt_tokens, 19)
            (row,) = await self.rows()
            self.assertEqual(row["model_requested"], "gpt-4o")
            self.assertEqual(row["input_tokens"], 19)
            received = self.upstream.received[0]
            self.assertEqual(received["uri"], "/v1/chat/completions")
            self.assertEqual(received["headers"]["authorization"], ["Bearer your-openai-api-key"])

        return support.as_deferred(go())


class UnpricedModelTests(GatewayTestCase):
    """A model without a price is recorded at cost NULL, never 0, and said so."""

    def test_unknown_model(self) -> defer.Deferred[None]:
        """
        Tokens are recorded, costs and pricing_key are NULL, one warning names
        the model, and the counter counts every such request.
        """

        async def go() -> None:
            answer = support.chat_completion("acme-model-1", 10, 5)
            self.upstream.queue = [support.Canned(chunks=[answer]), support.Canned(chunks=[answer])]
            with capturedLogs() as events:
                for _ in range(2):
                    await self.post("/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key=self.key)
            rows = await self.rows(2)
            for row in rows:
                self.assertEqual((row["input_tokens"], row["output_tokens"]), (10, 5))
                self.assertIsNone(row["total_cost"])
                self.assertIsNone(row["input_cost"])
                self.assertIsNone(row["pricing_key"])
            warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
            self.assertEqual(len(warnings), 1)
            self.assertIn("No price for model acme-model-1 on openai", warnings[0])
            self.assertEqual(self.gateway.proxy.unpriced["openai", "acme-model-1"], 2)

        return support.as_deferred(go())


class ForwardingTests(GatewayTestCase):
    """What reaches the provider, and what comes back, is the client's and the provider's."""

    def test_headers_filtered_and_path_kept(self) -> defer.Deferred[None]:
        """
        The path and query reach the provider as sent; X-Majordomo-* and
        hop-by-hop headers do not; other headers and the body pass unchanged.
        """

        async def go() -> None:
            raw = b'{"model": "gpt-4o-mini", "messages": []}'
            await self.post(
                "/v1/chat/completions?foo=bar&x=1",
                raw,
                X_Majordomo_Key=self.key,
                X_Majordomo_Feature="chat",
                Authorization="Bearer sk-abc",
                OpenAI_Organization="org-1",
                Proxy_Authorization="secret",
            )
            (received,) = self.upstream.received
            self.assertEqual(received["uri"], "/v1/chat/completions?foo=bar&x=1")
            self.assertEqual(received["body"], raw)
            headers = received["headers"]
            self.assertEqual(headers["authorization"], ["Bearer sk-abc"])
            self.assertEqual(headers["openai-organization"], ["org-1"])
            self.assertFalse([h for h in headers if h.startswith("x-majordomo")])
            self.assertNotIn("proxy-authorization", headers)
            self.assertEqual(headers["host"], [f"127.0.0.1:{self.upstream_port.getHost().port}"])

        return support.as_deferred(go())

    def test_provider_status_headers_body_returned(self) -> defer.Deferred[None]:
        """An upstream error comes back unchanged (status, headers, body) and gets a row."""

        async def go() -> None:
            error = (
                b'{"error": {"message": "Rate limit", "type": "requests",'
                b' "code": "rate_limit_exceeded"}}'
            )
            self.upstream.queue = [
                support.Canned(
                    status=429,
                    headers={"Content-Type": "application/json", "Retry-After": "7"},
                    chunks=[error],
                )
            ]
            response, body = await self.post(
                "/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key=self.key
            )
            self.assertEqual(response.code, 429)
            self.assertEqual(body, error)
            self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"7"])
            (row,) = await self.rows()
            self.assertEqual(row["status_code"], 429)
            self.assertEqual(row["usage_status"], "error_not_billed")
            self.assertEqual(Decimal(str(row["total_cost"])), Decimal(0))

        return support.as_deferred(go())

    def test_gzip_from_provider(self) -> defer.Deferred[None]:
        """
        A provider answering in gzip (as OpenAI does) reaches the client as
        the plain JSON, with no stale Content-Length, and its usage is read.
        """

        async def go() -> None:
            answer = support.chat_completion("gpt-4o-mini-2024-07-18", 1000, 2000)
            self.upstream.queue = [support.Canned(chunks=[answer], gzip=True)]
            # A plain Agent: it neither asks for nor decodes gzip itself.
            response = await Agent(reactor).request(
                b"POST",
                (self.url + "/v1/chat/completions").encode(),
                Headers({"X-Majordomo-Key": [self.key], "Connection": ["close"]}),
                FileBodyProducer(io.BytesIO(json.dumps(GUIDE_BODY).encode())),
            )
            body = await readBody(response)
            self.assertEqual(self.upstream.received[0]["headers"]["accept-encoding"], ["gzip"])
            self.assertEqual(body, answer)
            self.assertIsNone(response.headers.getRawHeaders(b"content-encoding"))
            self.assertIsNone(response.headers.getRawHeaders(b"content-length"))
            (row,) = await self.rows()
            self.assertEqual((row["input_tokens"], row["output_tokens"]), (1000, 2000))

        return support.as_deferred(go())

    def test_malformed_json_is_forwarded(self) -> defer.Deferred[None]:
        """A body that is not JSON is still proxied; the provider answers it."""

        async def go() -> None:
            self.upstream.queue = [
                support.Canned(status=400, chunks=[b'{"error": {"message": "bad json"}}'])
            ]
            response, _ = await self.post(
                "/v1/chat/completions", b"{not json", X_Majordomo_Key=self.key
            )
            self.assertEqual(response.code, 400)
            self.assertEqual(self.upstream.received[0]["body"], b"{not json")
            (row,) = await self.rows()
            self.assertEqual(row["status_code"], 400)
            self.assertIsNone(row["model_requested"])

        return support.as_deferred(go())

    def test_upstream_down_gives_502_and_row(self) -> defer.Deferred[None]:
        """
        When the provider refuses connections the client gets a 502 in
        OpenAI's error shape, and the request still has its row.
        """

        async def go() -> None:
            await self.upstream_port.stopListening()
            response, body = await self.post(
                "/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key=self.key
            )
            self.assertEqual(response.code, 502)
            self.assertIn("message", json.loads(body)["error"])
            (row,) = await self.rows()
            self.assertEqual(row["status_code"], 502)
            self.assertEqual(row["input_tokens"], 0)
            self.assertIn("could not be reached", row["error_message"])

        return support.as_deferred(go())


class AuthTests(GatewayTestCase):
    """Only a valid, active Majordomo key gets through."""

    async def _expect_401(self, **headers: str) -> dict[str, Any]:
        response, body = await self.post("/v1/chat/completions", GUIDE_BODY, **headers)
        self.assertEqual(response.code, 401)
        self.assertEqual(self.upstream.received, [])
        error: dict[str, Any] = json.loads(body)
        return error

    def test_missing_key(self) -> defer.Deferred[None]:
        """No X-Majordomo-Key: 401 in OpenAI's error shape, nothing forwarded."""

        async def go() -> None:
            error = await self._expect_401(Authorization="Bearer sk-x")
            self.assertIn("X-Majordomo-Key", error["error"]["message"])

        return support.as_deferred(go())

    def test_unknown_key(self) -> defer.Deferred[None]:
        """A key that was never issued gets 401."""

        async def go() -> None:
            await self._expect_401(X_Majordomo_Key="mdm_sk_not-a-real-key")

        return support.as_deferred(go())

    def test_revoked_key(self) -> defer.Deferred[None]:
        """A key works, is revoked, and its very next request gets 401."""

        async def go() -> None:
            response, _ = await self.post(
                "/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key=self.key
            )
            self.assertEqual(response.code, 200)
            await KeyStore(self.gateway.db).revoke(self.key_id)
            self.upstream.received.clear()
            await self._expect_401(X_Majordomo_Key=self.key)

        return support.as_deferred(go())

    def test_anthropic_error_shape(self) -> defer.Deferred[None]:
        """A 401 on an Anthropic path has Anthropic's error shape, so its SDK can read it."""

        async def go() -> None:
            response, body = await self.post("/v1/messages", {"model": "claude"})
            self.assertEqual(response.code, 401)
            self.assertEqual(json.loads(body)["type"], "error")
            self.assertEqual(json.loads(body)["error"]["type"], "authentication_error")

        return support.as_deferred(go())


class HealthTests(GatewayTestCase):
    """The health endpoints a load balancer polls."""

    def test_health(self) -> defer.Deferred[None]:
        """GET /health is 200 ok."""

        async def go() -> None:
            response = await self.http.get(self.url + "/health")
            self.assertEqual((response.code, await treq.content(response)), (200, b"ok"))

        return support.as_deferred(go())

    def test_readyz(self) -> defer.Deferred[None]:
        """GET /readyz is 200 and says PostgreSQL is reachable and nothing waits in the spool."""

        async def go() -> None:
            response = await self.http.get(self.url + "/readyz")
            self.assertEqual(response.code, 200)
            self.assertEqual(
                json.loads(await treq.content(response)),
                {
                    "status": "ok",
                    "postgres": "reachable",
                    "spooled_records": 0,
                    "pending_bodies": 0,
                },
            )

        return support.as_deferred(go())

    def test_readyz_without_postgres(self) -> defer.Deferred[None]:
        """
        Without PostgreSQL the gateway still journals traffic, so /readyz stays
        200, says PostgreSQL is unreachable, and counts the waiting records.
        """

        async def go() -> None:
            await self.post("/v1/chat/completions", b"{}", X_Majordomo_Key=self.key)
            await self.rows()  # the key is now cached, the first row written
            self.gateway.db.close()
            response, _ = await self.post("/v1/chat/completions", b"{}", X_Majordomo_Key=self.key)
            self.assertEqual(response.code, 200)
            response = await self.http.get(self.url + "/readyz")
            self.assertEqual(response.code, 200)
            body = json.loads(await treq.content(response))
            self.assertEqual(body["postgres"], "unreachable")
            self.assertEqual(body["spooled_records"], 1)

        return support.as_deferred(go())

    def test_readyz_503_when_spool_full(self) -> defer.Deferred[None]:
        """
        When records can no longer be journaled (spool full), /readyz is 503
        with the reason; requests are still served, their rows still written
        (from memory), and the failure is logged and counted.
        """

        async def go() -> None:
            self.gateway.spool.max_bytes = 0
            response = await self.http.get(self.url + "/readyz")
            self.assertEqual(response.code, 503)
            body = json.loads(await treq.content(response))
            self.assertEqual(body["status"], "unavailable")
            self.assertIn("spool full", body["reason"])
            with capturedLogs() as events:
                response, _ = await self.post(
                    "/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key=self.key
                )
            self.assertEqual(response.code, 200)
            (row,) = await self.rows()
            self.assertEqual(row["input_tokens"], 19)
            self.assertEqual(self.gateway.writer.spool_failures, 1)
            errors = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.error]
            self.assertTrue(any("cannot be journaled" in e for e in errors), errors)

        return support.as_deferred(go())
