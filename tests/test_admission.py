"""
The proxy's admission steps (L{majordomo.web.admission}) and the one place
their refusals are answered (L{majordomo.web.proxy.ProxyResource._send_refusal}),
driven through L{treq.testing.StubTreq} with in-memory stand-ins for the key
store, the prices and the log writer (L{tests.fakes}) and an upstream that
refuses every connection: no network, no database, no reactor.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer, task
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from majordomo import metadata
from majordomo.web import admission
from majordomo.web.admission import Arrival, Refusal
from majordomo.web.gateway import Gateway
from majordomo.web.metrics import GatewayMetrics
from majordomo.web.proxy import ProxyResource
from tests.fakes import FixedPrices, MemoryKeys, MemoryRecordSink

KEY = "md-test-key"
KEY_ID = "0190c0de-0000-7000-8000-000000000001"
BASE_URLS = {"openai": "http://openai.test", "anthropic": "http://anthropic.test"}


class _Upstream:
    """An upstream that refuses every connection, and counts the attempts."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    def request(self, method: bytes, url: bytes, *args: Any) -> defer.Deferred[Any]:
        self.requests.append(url)
        return defer.fail(ConnectionRefusedError("refused"))


class ProxyCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.keys = MemoryKeys()
        self.keys.add(KEY, KEY_ID)
        self.writer = MemoryRecordSink()
        self.upstream = _Upstream()
        self.metrics = GatewayMetrics()
        self.resource = ProxyResource(
            Gateway(
                authenticate=self.keys.authenticate,
                base_url=lambda provider: BASE_URLS.get(provider, ""),
                upstream=self.upstream,  # type: ignore[arg-type]
                prices=FixedPrices(),
                writer=self.writer,
                clock=task.Clock(),
                response_timeout=60.0,
                idle_timeout=30.0,
                metrics=self.metrics,
            )
        )
        # StubTreq makes its methods at run time.
        self.http: Any = StubTreq(self.resource)

    def send(
        self, path: str, body: bytes = b"{}", **headers: str | list[str]
    ) -> tuple[int, dict[str, Any]]:
        """POST through the proxy; the status and the decoded JSON body."""
        raw = {
            name.replace("_", "-"): value if isinstance(value, list) else [value]
            for name, value in headers.items()
        }
        d = self.http.post("http://gateway.test" + path, body, headers=raw)
        self.http.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(self.http.content(response))
        return response.code, json.loads(content)

    def counted(self, provider: str, status: int) -> float | None:
        return self.metrics.registry.get_sample_value(
            "majordomo_requests_total", {"provider": provider, "model": "", "status": str(status)}
        )


class RefusedBeforeTheKeyTests(ProxyCase):
    """Refusals of a request with no valid key: answered, counted, but no row (whose?)."""

    def test_missing_key(self) -> None:
        """No key: 401 in the format of the path's provider (OpenAI's here)."""
        status, body = self.send("/v1/chat/completions")
        self.assertEqual(status, 401)
        self.assertEqual(body["error"]["message"], "Missing X-Majordomo-Key header")
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        self.assertEqual(self.writer.records, [])
        self.assertEqual(self.counted("openai", 401), 1)

    def test_repeated_key(self) -> None:
        """Two keys: 400, since which of them to check is ambiguous."""
        status, _ = self.send("/v1/chat/completions", X_Majordomo_Key=[KEY, KEY])
        self.assertEqual(status, 400)
        self.assertEqual(self.writer.records, [])

    def test_invalid_key(self) -> None:
        """An unknown key: 401 in Anthropic's format on Anthropic's path."""
        status, body = self.send("/v1/messages", X_Majordomo_Key="md-nope")
        self.assertEqual(status, 401)
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "authentication_error")
        self.assertEqual(self.writer.records, [])

    def test_key_store_down(self) -> None:
        """Keys cannot be checked: 503, to try again; nothing forwarded."""
        self.keys.down = True
        status, body = self.send("/v1/chat/completions", X_Majordomo_Key=KEY)
        self.assertEqual(status, 503)
        self.assertIn("unavailable", body["error"]["message"])
        self.assertEqual(self.upstream.requests, [])


class RefusedWithAKeyTests(ProxyCase):
    """Refusals of a request with a valid key: answered in its provider's format, with a row."""

    def test_unknown_provider_header(self) -> None:
        """
        An X-Majordomo-Provider that names no provider is refused, in the
        format of the path's provider, and its row names that provider.
        """
        status, body = self.send(
            "/v1/messages", X_Majordomo_Key=KEY, X_Majordomo_Provider="https://evil.test"
        )
        self.assertEqual(status, 400)
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        self.assertEqual(body["type"], "error")  # Anthropic's shape
        row = self.writer.only()
        self.assertEqual(row["status_code"], 400)
        self.assertEqual(row["provider"], "anthropic")
        self.assertEqual(row["majordomo_api_key_id"], KEY_ID)
        self.assertEqual(row["error_message"], "Provider 'https://evil.test' is not configured")
        self.assertEqual(self.upstream.requests, [])

    def test_provider_not_configured(self) -> None:
        """A provider with no base URL: 400 in its own format (Gemini's), with a row."""
        status, body = self.send(
            "/v1beta/models/gemini-2.0-flash:generateContent", X_Majordomo_Key=KEY
        )
        self.assertEqual(status, 400)
        self.assertEqual(body["error"]["status"], "INVALID_ARGUMENT")
        row = self.writer.only()
        self.assertEqual(row["error_message"], "Provider 'gemini' is not configured")
        self.assertEqual(self.counted("gemini", 400), 1)

    def test_too_much_metadata(self) -> None:
        """Metadata over its limit: 400 with a row that still names the requested model."""
        extra = {f"X_Majordomo_M{i}": "v" for i in range(metadata.MAX_HEADERS + 1)}
        status, body = self.send(
            "/v1/chat/completions", b'{"model": "gpt-4o"}', X_Majordomo_Key=KEY, **extra
        )
        self.assertEqual(status, 400)
        self.assertIn("metadata headers", body["error"]["message"])
        row = self.writer.only()
        self.assertEqual(row["model_requested"], "gpt-4o")
        self.assertEqual(row["status_code"], 400)
        self.assertEqual(self.upstream.requests, [])

    def test_admitted_request_is_forwarded(self) -> None:
        """
        A request that passes admission goes to its provider's base URL; an
        upstream that refuses the connection gets a 502 and a row billed nothing.
        """
        status, body = self.send("/v1/chat/completions?x=1", X_Majordomo_Key=KEY)
        self.assertEqual(self.upstream.requests, [b"http://openai.test/v1/chat/completions?x=1"])
        self.assertEqual(status, 502)
        self.assertEqual(body["error"]["message"], "The upstream provider could not be reached")
        row = self.writer.only()
        self.assertEqual((row["status_code"], row["total_cost"]), (502, "0"))


class RejectionRowTests(ProxyCase):
    """Rows of requests refused before the proxy saw them (413, 408), by their key."""

    def reject(self, headers: Headers, path: str = "/v1/messages") -> None:
        self.resource.record_rejection(headers, "POST", path, 413, "too large")

    def test_valid_key_gets_a_row(self) -> None:
        """A valid key: one row, for the path's provider even if the header names none."""
        self.reject(
            Headers({b"x-majordomo-key": [KEY.encode()], b"x-majordomo-provider": [b"nope"]})
        )
        row = self.writer.only()
        self.assertEqual((row["status_code"], row["provider"]), (413, "anthropic"))
        self.assertEqual(row["error_message"], "too large")

    def test_no_row_without_one_valid_key(self) -> None:
        """No key, an unknown one, or two: no row."""
        for keys in ([], [b"md-nope"], [KEY.encode(), KEY.encode()]):
            self.reject(Headers({b"x-majordomo-key": keys} if keys else {}))
        self.assertEqual(self.writer.records, [])


class AdmissionStepTests(SynchronousTestCase):
    """The steps on their own."""

    def test_arrival_splits_the_target_once(self) -> None:
        """The provider is chosen on arrival; the path and query come from the target."""
        arrival = Arrival.of(Headers(), "POST", "/openai/deployments/d/chat?api-version=1", 5.0)
        self.assertEqual(arrival.provider, "azure")
        self.assertEqual(arrival.path, "/openai/deployments/d/chat")
        self.assertEqual(arrival.query, "api-version=1")
        self.assertIsNone(arrival.choice.refused)

    def test_target_not_forwarded(self) -> None:
        """An absolute-form target or a bad method is refused with 400, not forwarded."""
        for method, target in ((b"POST", b"http://evil.test/"), (b"PO ST", b"/v1/models")):
            with self.assertRaises(Refusal) as raised:
                admission.upstream_url(method, target, "http://openai.test")
            self.assertEqual(raised.exception.status, 400)
        self.assertEqual(
            admission.upstream_url(b"GET", b"/v1/models", "http://openai.test/base"),
            b"http://openai.test/base/v1/models",
        )

    def test_record_keeps_no_secret(self) -> None:
        """An admitted request's record holds its provider key only hashed, its path redacted."""
        headers = Headers({b"authorization": [b"Bearer sk-secret"]})
        arrival = Arrival.of(headers, "GET", "/v1/models?key=sk-secret", 5.0)
        record = admission.new_record(arrival, KEY_ID, headers)
        self.assertEqual(record.path, "/v1/models?key=REDACTED")
        self.assertNotIn("sk-secret", repr(record))
        self.assertIsNotNone(record.provider_key_hash)
