"""
Custom metadata, as the guide's "Adding Custom Metadata" section uses it:
X-Majordomo-* headers into raw_metadata, its SQL, limits, the per-key
registry and activation into indexed_metadata.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase

from majordomo.ids import uuid7
from majordomo.ledger.record import RequestRecord
from majordomo.metadata import MetadataError, canonical, distinct_estimate, extract
from tests import support
from tests.gateway_case import GatewayTestCase
from tests.guide import GUIDE_BY_USER
from tests.test_cli import majordomo
from tests.test_gateway import GUIDE_BODY


def headers(**named: str) -> list[tuple[bytes, list[bytes]]]:
    return [(name.replace("_", "-").encode(), [value.encode()]) for name, value in named.items()]


class ExtractTests(SynchronousTestCase):
    """Reading metadata from headers."""

    def test_canonical_names(self) -> None:
        """Whatever case the client sends, each dash-separated word is capitalised."""
        self.assertEqual(canonical("user-id"), "User-Id")
        self.assertEqual(canonical("USER-ID"), "User-Id")
        self.assertEqual(canonical("feature"), "Feature")
        found = extract(headers(X_MAJORDOMO_USER_ID="u1", x_majordomo_feature="chat"))
        self.assertEqual(found.raw, {"User-Id": "u1", "Feature": "chat"})

    def test_reserved_and_alias(self) -> None:
        """Key and Provider are not metadata; Provider-Alias goes to its own column."""
        found = extract(
            headers(
                X_Majordomo_Key="mdm_sk_x",
                X_Majordomo_Provider="openai",
                X_Majordomo_Provider_Alias="team-a-openai",
                X_Majordomo_Environment="production",
                Authorization="Bearer sk",
            )
        )
        self.assertEqual(found.raw, {"Environment": "production"})
        self.assertEqual(found.provider_alias, "team-a-openai")

    def test_limits(self) -> None:
        """33 headers, a 65-character name, a 513-byte value or bad UTF-8 are refused."""
        many = [(f"X-Majordomo-M{i}".encode(), [b"v"]) for i in range(33)]
        with self.assertRaises(MetadataError):
            extract(many)
        self.assertEqual(len(extract(many[:32]).raw), 32)
        with self.assertRaises(MetadataError):
            extract([(b"X-Majordomo-" + b"n" * 65, [b"v"])])
        extract([(b"X-Majordomo-" + b"n" * 64, [b"v"])])
        with self.assertRaises(MetadataError) as caught:
            extract([(b"X-Majordomo-Note", [b"v" * 513])])
        self.assertIn("513 bytes", str(caught.exception))
        extract([(b"X-Majordomo-Note", ["é".encode() * 256])])  # 512 bytes
        with self.assertRaises(MetadataError) as caught:
            extract([(b"X-Majordomo-Note", [b"\xff\xfe"])])
        self.assertIn("not valid UTF-8", str(caught.exception))
        # NUL becomes U+FFFD here, as in the stored row, so a --per budget's
        # bucket (read from this value) is the one the row is counted in.
        self.assertEqual(
            extract([(b"X-Majordomo-User-Id", [b"a\x00b"])]).raw, {"User-Id": "a\ufffdb"}
        )


class GuideMetadataTests(GatewayTestCase):
    """The guide's metadata example, end to end."""

    def test_guide_example_and_query(self) -> defer.Deferred[None]:
        """
        The guide's Python snippet (extra_headers) tags requests; the guide's
        "Query usage by metadata" SQL groups them by user with exact costs.
        """
        from openai import OpenAI

        async def go() -> None:
            client = OpenAI(base_url=self.url + "/v1", api_key="your-openai-api-key", max_retries=0)
            self.addCleanup(threads.deferToThread, client.close)

            def call(user: str) -> Any:
                return client.chat.completions.create(
                    model="gpt-4o",
                    messages=[{"role": "user", "content": "Hello!"}],
                    extra_headers={
                        "X-Majordomo-Key": self.key,
                        "X-Majordomo-User-Id": user,
                        "X-Majordomo-Feature": "chat",
                        "X-Majordomo-Environment": "production",
                    },
                )

            for user in ("user_123", "user_123", "user_456"):
                await threads.deferToThread(call, user)
            rows = await self.rows(3)
            self.assertEqual(
                rows[0]["raw_metadata"],
                {"User-Id": "user_123", "Feature": "chat", "Environment": "production"},
            )
            one = Decimal("0.00000885")  # 19 x $0.15/M + 10 x $0.60/M (gpt-4o-mini snapshot)
            self.assertEqual(
                support.run_sql(GUIDE_BY_USER), [("user_123", 2, 2 * one), ("user_456", 1, one)]
            )
            sent = self.upstream.received[0]["headers"]
            self.assertFalse([name for name in sent if name.startswith("x-majordomo")])

        return support.as_deferred(go())

    def test_header_case_does_not_matter(self) -> defer.Deferred[None]:
        """X-MAJORDOMO-USER-ID and x-majordomo-user-id both land under User-Id."""

        async def go() -> None:
            for name in ("X-MAJORDOMO-USER-ID", "x-majordomo-user-id"):
                await self.post(
                    "/v1/chat/completions",
                    GUIDE_BODY,
                    X_Majordomo_Key=self.key,
                    **{name.replace("-", "_"): "u1"},
                )
            rows = await self.rows(2)
            self.assertEqual([r["raw_metadata"] for r in rows], [{"User-Id": "u1"}] * 2)

        return support.as_deferred(go())

    def test_limits_give_400(self) -> defer.Deferred[None]:
        """Each limit gives a 400 in the provider's error shape, forwards nothing, and has a row."""

        async def go() -> None:
            bad = [
                {f"X_Majordomo_M{i}": "v" for i in range(33)},
                {"X_Majordomo_" + "n" * 65: "v"},
                {"X_Majordomo_Note": "v" * 513},
            ]
            for extra in bad:
                response, body = await self.post(
                    "/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key=self.key, **extra
                )
                self.assertEqual(response.code, 400)
                self.assertIn("X-Majordomo", json.loads(body)["error"]["message"])
            self.assertEqual(self.upstream.received, [])
            rows = await self.rows(3)
            self.assertEqual({r["status_code"] for r in rows}, {400})

        return support.as_deferred(go())

    def test_provider_alias(self) -> defer.Deferred[None]:
        """X-Majordomo-Provider-Alias is stored in provider_api_key_alias, not in metadata."""

        async def go() -> None:
            await self.post(
                "/v1/chat/completions",
                GUIDE_BODY,
                X_Majordomo_Key=self.key,
                X_Majordomo_Provider_Alias="team-a",
            )
            (row,) = await self.rows()
            self.assertEqual((row["provider_api_key_alias"], row["raw_metadata"]), ("team-a", {}))

        return support.as_deferred(go())


class RegistryTests(GatewayTestCase):
    """llm_requests_metadata_keys and `majordomo metadata ...`."""

    def test_registry_and_activation(self) -> defer.Deferred[None]:
        """
        Names seen are registered with counts and distinct values; `metadata
        activate` makes the running gateway copy the name into indexed_metadata
        from the next request (GIN-queryable); `deactivate` stops it.
        """

        async def send(user: str) -> None:
            await self.post(
                "/v1/chat/completions",
                GUIDE_BODY,
                X_Majordomo_Key=self.key,
                X_Majordomo_User_Id=user,
                X_Majordomo_Feature="chat",
            )

        async def go() -> None:
            for user in ("a", "b", "a"):
                await send(user)
            await self.rows(3)
            out, err, code = await majordomo("metadata", "list", "--key-id", self.key_id)
            self.assertEqual((err, code), ("", 0))
            lines = out.splitlines()
            self.assertTrue(lines[0].startswith("NAME"))
            self.assertRegex(lines[1], r"^Feature\s+no\s+3\s+1\s+\d{4}-")
            self.assertRegex(lines[2], r"^User-Id\s+no\s+3\s+2\s+\d{4}-")

            out, _, code = await majordomo(
                "metadata", "activate", "--key-id", self.key_id, "user-id"
            )
            self.assertEqual(code, 0)
            self.assertIn("User-Id is now copied into indexed_metadata", out)
            await support.wait_for(lambda: self.gateway.key_cache.size == 0)  # NOTIFY heard
            await send("c")
            rows = await self.rows(4)
            self.assertEqual(rows[-1]["indexed_metadata"], {"User-Id": "c"})
            found = support.run_sql(
                "SELECT count(*) FROM llm_requests WHERE indexed_metadata @> %s",
                (json.dumps({"User-Id": "c"}),),
            )
            self.assertEqual(found, [(1,)])

            await majordomo("metadata", "deactivate", "--key-id", self.key_id, "User-Id")
            await support.wait_for(lambda: self.gateway.key_cache.size == 0)
            await send("d")
            rows = await self.rows(5)
            self.assertEqual(rows[-1]["indexed_metadata"], {})

        return support.as_deferred(go())


class DistinctValuesTests(GatewayTestCase):
    """The registry's HyperLogLog sketch, written by the batch statement."""

    def record(self, n: int, user: str) -> dict[str, Any]:
        record = RequestRecord.start(
            request_id=uuid7(1_700_000_000 + n / 1000),
            arrived=1_700_000_000 + n / 1000,
            key_id=self.key_id,
            provider="openai",
            method="POST",
            path="/v1/chat/completions",
            model_requested="gpt-4o",
            provider_key_hash=None,
        )
        record.raw_metadata = {"User-Id": user}
        return record.failed(1_700_000_000 + n / 1000, 429, "rate limited")

    def test_distinct_estimate_and_replay(self) -> defer.Deferred[None]:
        """
        3,000 requests from 1,000 users: the estimate is within 5% of 1,000;
        writing the same rows again changes neither the count nor the sketch.
        """

        async def go() -> None:
            records = [self.record(n, f"user_{n % 1000}") for n in range(3000)]
            for record in records:
                self.gateway.writer.add(record)
            await self.gateway.writer.flush()
            query = (
                "SELECT request_count, hll FROM llm_requests_metadata_keys "
                "WHERE key_name = 'User-Id'"
            )
            ((count, sketch),) = support.run_sql(query)
            self.assertEqual(count, 3000)
            self.assertLess(abs(distinct_estimate(sketch) - 1000), 50)
            for record in records[:500]:
                self.gateway.writer.add(record)
            await self.gateway.writer.flush()
            self.assertEqual(support.run_sql(query), [(3000, sketch)])

        return support.as_deferred(go())
