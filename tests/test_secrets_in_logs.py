"""
Defect 5: a provider key never reaches a log line, a row, a spool file or
/metrics.  Two real gateway processes (twistd's text log and the JSON log)
get marker keys in every place a provider key travels, in well-formed and
malformed requests, to providers that answer, refuse the connection or
reset it; then everything the gateways wrote is searched for the markers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Any

from twisted.internet import defer, error, protocol, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from majordomo.providers import secrets
from tests import raw_http, support
from tests.test_tap import _Output, free_port

MARK = "MDMLEAK"
CHAT = b"/v1/chat/completions"
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
PATHS = {
    "openai": CHAT,
    "azure": b"/openai/deployments/D/chat/completions?api-version=2024-10-21",
    "anthropic": b"/v1/messages",  # its base URL refuses connections
    "gemini": b"/v1beta/models/gemini-2.0-flash:generateContent",  # its upstream resets
}
HEADER_PLACES = [
    (b"Authorization", b"Bearer %s"),
    (b"x-api-key", b"%s"),
    (b"api-key", b"%s"),
    (b"x-goog-api-key", b"%s"),
]
QUERY_PLACES = [
    b"?key=%s",
    b"?api_key=%s",
    b"?api-key=%s",
    b"?KEY=%s",
    b"?a=1?key=%s",
    b"?key=%s&key=%s2",
    b"?a=1;key=%s",
    b"?k%65y=%s",
    b"?%6B%65%79=%s",
    b"?a=1&api_key=%s#x",
]


class _Reset(protocol.Protocol):
    """An upstream that resets every connection once the request arrives."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]


def _with_query(path: bytes, query: bytes) -> bytes:
    return path + (b"&" + query[1:] if b"?" in path else query)


class SecretsInLogsTests(TestCase):
    timeout = 120

    def setUp(self) -> defer.Deferred[None]:
        support.fresh_database()
        self.upstream = support.FakeProvider(
            support.Canned(chunks=[support.chat_completion("gpt-4o-mini", 3, 2)])
        )
        answering = reactor.listenTCP(0, Site(self.upstream), interface="127.0.0.1")
        self.addCleanup(answering.stopListening)
        resetting = reactor.listenTCP(
            0, protocol.Factory.forProtocol(_Reset), interface="127.0.0.1"
        )
        self.addCleanup(resetting.stopListening)
        base = f"http://127.0.0.1:{answering.getHost().port}"
        self.providers = {
            "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": base,
            "MAJORDOMO_PROVIDERS_AZURE_BASE_URL": base,
            "MAJORDOMO_PROVIDERS_ANTHROPIC_BASE_URL": f"http://127.0.0.1:{free_port()}",
            "MAJORDOMO_PROVIDERS_GEMINI_BASE_URL": f"http://127.0.0.1:{resetting.getHost().port}",
        }
        self.key = support.create_key(support.test_env(), "leak")
        self.gateways: list[tuple[int, _Output, str]] = []
        return support.as_deferred(self._start_both())

    async def _start_both(self) -> None:
        for logger in ([], ["--logger=majordomo.logs.json_observer"]):
            port = free_port()
            env = support.test_env(MAJORDOMO_SERVER_PORT=str(port), **self.providers)
            out = _Output()
            args = [support.TWISTD_BIN, "--nodaemon", "--pidfile=", *logger, "majordomo"]
            process = reactor.spawnProcess(out, args[0], args, env=env, path=None)
            self.addCleanup(self._stop, process, out)
            self.gateways.append((port, out, env["MAJORDOMO_STORAGE_SPOOL_DIR"]))
        for _, out, _ in self.gateways:
            await support.wait_for(lambda out=out: b"Pricing data loaded" in out.output, 30)

    @staticmethod
    def _stop(process: Any, out: _Output) -> defer.Deferred[int]:
        with contextlib.suppress(error.ProcessExitedAlready):
            process.signalProcess(signal.SIGTERM)
        return out.ended

    def _requests(self) -> list[tuple[bytes, list[tuple[bytes, bytes]], bool]]:
        """(target, headers, whether it gets a row) for each request, each with its marker."""
        requests = []
        count = 0

        def mark() -> bytes:
            nonlocal count
            count += 1
            return f"{MARK}{count:04d}".encode()

        key = (b"X-Majordomo-Key", self.key.encode())
        for provider, path in PATHS.items():
            chosen = (b"X-Majordomo-Provider", provider.encode())
            for name, value in HEADER_PLACES:
                requests.append((path, [key, chosen, (name, value % mark())], True))
            for query in QUERY_PLACES:
                secret = mark()
                target = _with_query(path, query.replace(b"%s", secret))
                requests.append((target, [key, chosen], True))
            route = path.partition(b"?")[0]
            for target in (
                route + b";key=" + mark(),
                route + b"\x85?key=" + mark(),
                route.lstrip(b"/") + b"?key=" + mark(),
                b"http://127.0.0.1:1" + route + b"?key=" + mark(),
            ):
                requests.append((target, [key, chosen], True))
            refused_keys = [
                [],
                [(b"X-Majordomo-Key", b"mdm_sk_not_a_key")],
                [key, key],
            ]
            for keys in refused_keys:
                requests.append((route + b"?key=" + mark(), [*keys, chosen], False))
            unknown = (b"X-Majordomo-Provider", b"mistral")
            requests.append((route + b"?key=" + mark(), [key, unknown], True))
        return requests

    def test_no_marker_anywhere(self) -> defer.Deferred[None]:
        """
        No marker in either log, any row, any spool file or /metrics; the
        rows are there (one per request with a valid key) and their paths
        say REDACTED.
        """

        async def go() -> None:
            requests = self._requests()
            statuses = set()
            for port, _, _ in self.gateways:
                for target, headers, _ in requests:
                    headers = [*headers, (b"Content-Type", b"application/json")]
                    data = raw_http.request_bytes(b"POST", target, headers, BODY)
                    statuses.add((await raw_http.send(port, data)).status)
            self.assertTrue({200, 400, 401, 502} <= statuses, statuses)
            expected = 2 * sum(1 for _, _, row in requests if row)

            def rows() -> list[str]:
                found = support.run_sql("SELECT row_to_json(r)::text FROM llm_requests r")
                return [r[0] for r in found]

            with contextlib.suppress(AssertionError):  # (counted last)
                await support.wait_for(lambda: len(rows()) >= expected, 20)
            stored = rows()
            metrics = [
                (await raw_http.send(port, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"))
                for port, _, _ in self.gateways
            ]
            for _, out, _ in self.gateways:
                out.transport.signalProcess(signal.SIGTERM)  # type: ignore[attr-defined]
                await out.ended
            places: dict[str, bytes] = {
                "row": "\n".join(stored).encode(),
                "metrics": b"".join(m.body for m in metrics),
            }
            for (_, out, spool), log in zip(self.gateways, ("text log", "json log"), strict=True):
                places[log] = out.output
                for folder, _, files in os.walk(spool):
                    for name in files:
                        with open(os.path.join(folder, name), "rb") as f:
                            places[os.path.join(folder, name)] = f.read()
            self.assertIn(b"POST /v1/chat/completions", places["text log"])
            self.assertIn(b'"request_line"', places["json log"])
            self.assertIn(b"majordomo_requests_total", places["metrics"])
            for place, text in places.items():
                at = text.find(MARK.encode())
                self.assertEqual(at, -1, f"a marker key in {place}: {text[at - 300 : at + 50]!r}")
                self.assertNotIn(MARK.lower().encode(), text.lower(), f"a marker key in {place}")
            self.assertEqual(len(stored), expected)
            self.assertTrue(any("REDACTED" in json.loads(r)["path"] for r in stored))

        return support.as_deferred(go())


class RedactPathTests(SynchronousTestCase):
    """redact_path hides a key however the query is split, and keeps every other byte."""

    def test_any_query(self) -> None:
        cases = {
            "/v1/m?a=1?key=S": "/v1/m?a=1?key=REDACTED",
            "/x?key=S&key=S2": "/x?key=REDACTED&key=REDACTED",
            "/x?a=1;key=S": "/x?a=1;key=REDACTED",
            "/x;key=S": "/x;key=REDACTED",
            "/x?k%65y=S&b=2": "/x?k%65y=REDACTED&b=2",
            "/x?%6B%65%79=S": "/x?%6B%65%79=REDACTED",
            "/x?KEY=S#frag": "/x?KEY=REDACTED",
            "/x?api_key=S?x=1&y=2": "/x?api_key=REDACTED&y=2",
            "/x?a=b%20c&api-key=S": "/x?a=b%20c&api-key=REDACTED",
            "/x?a=key=S": "/x?a=key=S",  # a value, not a parameter named key
            # Found by tests/fuzz/fuzz_providers.py: a secret name with no value.
            "/?EY=S2?EY=S2CR3T&&api_key&&\xea/lv": "/?EY=S2?EY=S2CR3T&&api_key=REDACTED&&\xea/lv",
            "/v1/models?a=ER3T&&stree&key&y%64y": "/v1/models?a=ER3T&&stree&key=REDACTED&y%64y",
        }
        for path, redacted in cases.items():
            self.assertEqual(secrets.redact_path(path), redacted, path)
            self.assertEqual(secrets.redact_path(redacted), redacted)
