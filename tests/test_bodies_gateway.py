"""
The guide's "S3 Body Storage" through the running gateway: configured with
the guide's env vars against moto's S3 server on loopback, a request's bodies
land at the key its row names, in the guide's structure, with no secret.
Also `logging.body_storage: postgres`.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
from typing import Any

import boto3
from moto.server import ThreadedMotoServer
from twisted.internet import defer, threads

from tests import support
from tests.gateway_case import GatewayTestCase
from tests.test_gateway import GUIDE_BODY
from tests.vectors import VECTORS, load_vector


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log
MOTO_PORT = _free_port()
S3_ENV = {
    "MAJORDOMO_LOGGING_BODY_STORAGE": "s3",
    "MAJORDOMO_S3_ENABLED": "true",
    "MAJORDOMO_S3_BUCKET": "majordomo-logs",
    "MAJORDOMO_S3_REGION": "us-east-1",
    "MAJORDOMO_S3_ENDPOINT": f"http://127.0.0.1:{MOTO_PORT}",
    "MAJORDOMO_S3_ACCESS_KEY_ID": "testing-access-key",
    "MAJORDOMO_S3_SECRET_ACCESS_KEY": "testing-secret-key",
}


def _s3() -> Any:
    return boto3.client(
        "s3",
        endpoint_url=S3_ENV["MAJORDOMO_S3_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id="testing-access-key",
        aws_secret_access_key="testing-secret-key",
    )


class S3BodyTests(GatewayTestCase):
    """Bodies in S3 as gzip JSON."""

    gateway_env = S3_ENV

    def setUp(self) -> defer.Deferred[None]:
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=MOTO_PORT, verbose=False)
        self.moto.start()
        self.addCleanup(self.moto.stop)
        _s3().create_bucket(Bucket="majordomo-logs")
        return super().setUp()

    async def fetch(self, key: str) -> dict[str, Any]:
        """The object at C{key}, decompressed, once it has been uploaded."""

        def get() -> bytes | None:
            try:
                return bytes(_s3().get_object(Bucket="majordomo-logs", Key=key)["Body"].read())
            except Exception:
                return None

        for _ in range(100):
            data = await threads.deferToThread(get)
            if data is not None:
                document: dict[str, Any] = json.loads(gzip.decompress(data))
                return document
            await support.sleep(0.1)
        raise AssertionError(f"no object at {key}")

    def test_guide_structure_and_key(self) -> defer.Deferred[None]:
        """
        The row's s3_key (the guide's SELECT finds it) is
        {key id[:16]}/{date}/{request id}.json.gz, and the object holds the
        guide's structure with both JSON bodies embedded as JSON.
        """

        async def go() -> None:
            response, body = await self.post(
                "/v1/chat/completions?key=AIzaSECRET",
                GUIDE_BODY,
                X_Majordomo_Key=self.key,
                Authorization="Bearer sk-secret-provider-key",
                X_Api_Key="sk-ant-secret",
                X_Goog_Api_Key="AIza-goog-secret",
            )
            request_id = response.headers.getRawHeaders(b"x-majordomo-request-id")[0].decode()
            await self.rows()
            (row,) = support.run_sql(
                "SELECT s3_key, created_at::date::text FROM llm_requests WHERE id = %s",
                (request_id,),
            )
            s3_key, day = row
            self.assertEqual(s3_key, f"{self.key_id[:16]}/{day}/{request_id}.json.gz")
            document = await self.fetch(s3_key)
            self.assertEqual(set(document), {"request_id", "timestamp", "request", "response"})
            self.assertEqual(document["request_id"], request_id)
            self.assertRegex(document["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            self.assertEqual(document["request"]["method"], "POST")
            self.assertEqual(document["request"]["body"], GUIDE_BODY)
            self.assertEqual(document["response"]["status_code"], 200)
            self.assertEqual(document["response"]["body"], json.loads(body))
            text = json.dumps(document)
            for secret in (
                "AIzaSECRET",
                "sk-secret-provider-key",
                "sk-ant-secret",
                "AIza-goog-secret",
                self.key,
            ):
                self.assertNotIn(secret, text)

        return support.as_deferred(go())

    def test_stream_body_is_a_string(self) -> defer.Deferred[None]:
        """An event-stream response is stored as the string the client received."""
        vector = load_vector(f"{VECTORS}/20_anthropic_stream_cache_5m_1h_and_read.json")
        self.upstream.queue = [
            support.Canned(
                headers={"Content-Type": "text/event-stream"},
                chunks=[vector["response_body"].encode()],
            )
        ]

        async def go() -> None:
            await self.post("/v1/messages", vector["request_body"], X_Majordomo_Key=self.key)
            (row,) = await self.rows()
            document = await self.fetch(row["s3_key"])
            self.assertEqual(document["response"]["body"], vector["response_body"])

        return support.as_deferred(go())

    def test_injected_usage_not_stored(self) -> defer.Deferred[None]:
        """
        For a stream whose client did not ask for usage, the object holds the
        client's request (no stream_options) and the stream the client got
        (without the usage chunk the gateway asked for).
        """
        vector = load_vector(f"{VECTORS}/03_openai_chat_stream_include_usage.json")
        self.upstream.queue = [
            support.Canned(
                headers={"Content-Type": "text/event-stream"},
                chunks=[vector["response_body"].encode()],
            )
        ]
        request = {**GUIDE_BODY, "stream": True}

        async def go() -> None:
            _, received = await self.post("/v1/chat/completions", request, X_Majordomo_Key=self.key)
            (row,) = await self.rows()
            document = await self.fetch(row["s3_key"])
            self.assertEqual(document["request"]["body"], request)
            self.assertEqual(document["response"]["body"], received.decode())
            self.assertNotIn('"prompt_tokens"', document["response"]["body"])

        return support.as_deferred(go())


class PostgresBodyTests(GatewayTestCase):
    """logging.body_storage: postgres keeps bodies in the row, cut at max_body_size."""

    gateway_env = {
        "MAJORDOMO_LOGGING_BODY_STORAGE": "postgres",
        "MAJORDOMO_LOGGING_MAX_BODY_SIZE": "100",
    }

    def test_bodies_in_row(self) -> defer.Deferred[None]:
        """request_body and response_body hold the bodies, each cut at 100 bytes."""

        async def go() -> None:
            _, body = await self.post("/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key=self.key)
            (row,) = await self.rows()
            self.assertEqual(row["request_body"], json.dumps(GUIDE_BODY)[:100])
            self.assertEqual(row["response_body"], body.decode()[:100])
            self.assertIsNone(row["s3_key"])

        return support.as_deferred(go())
