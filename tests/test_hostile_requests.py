"""
A caller with a valid key, sending whatever HTTP allows: request targets
that would redirect the upstream request, bytes the HTTP client refuses,
two keys, an unknown provider, JSON nested 100,000 deep, a 20 MiB body,
newlines in names.  Each gets a clear answer and its row; nothing goes
anywhere but the configured provider, and the reactor keeps answering.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer, error, reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from majordomo.db.keys import KeyStore
from majordomo.providers import request_fields
from majordomo.providers.openai_usage import inject_include_usage
from majordomo.service import GatewayService
from majordomo.web import request_log
from tests import raw_http, support

CHAT = b"/v1/chat/completions"
# Every provider and path form, with the provider it is sent to.
PATH_FORMS = [
    ("openai", CHAT),
    ("azure", b"/openai/deployments/D/chat/completions?api-version=2024-10-21"),
    ("anthropic", b"/v1/messages"),
    ("gemini", b"/v1beta/models/gemini-2.0-flash:generateContent?key=AIzaFAKE"),
]
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
INSERTED = b'"stream_options":{"include_usage":true},'
HEALTH = b"GET /health HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"


def _listen_pair() -> tuple[Any, Any, Any, Any]:
    """
    A fake provider on port P and a trap on port P*10+1: a request target
    "1/v1/..." appended to http://127.0.0.1:P as text names the trap.
    """
    for _ in range(50):
        port = random.randrange(1100, 6553)
        upstream, trap = support.FakeProvider(), support.FakeProvider()
        try:
            listening = reactor.listenTCP(port, Site(upstream), interface="127.0.0.1")
        except error.CannotListenError:
            continue
        try:
            trapped = reactor.listenTCP(port * 10 + 1, Site(trap), interface="127.0.0.1")
        except error.CannotListenError:
            listening.stopListening()
            continue
        return upstream, listening, trap, trapped
    raise AssertionError("no free pair of ports")


class _Gateway(TestCase):
    """A gateway on loopback whose providers all point at C{self.upstream}."""

    base_path = ""

    async def _start(self) -> None:
        support.fresh_database()
        self.upstream, listening, self.trap, trapped = _listen_pair()
        self.addCleanup(listening.stopListening)
        self.addCleanup(trapped.stopListening)
        base = f"http://127.0.0.1:{listening.getHost().port}{self.base_path}"
        env = {
            f"MAJORDOMO_PROVIDERS_{name}_BASE_URL": base
            for name in ("OPENAI", "ANTHROPIC", "GEMINI", "AZURE")
        }
        self.gateway = GatewayService(support.gateway_config(0, **env), reactor=reactor)
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        await support.wait_for(lambda: self.gateway.port is not None and self.gateway.db.available)
        self.port = self.gateway.port.getHost().port
        _, self.key = await KeyStore(self.gateway.db).create("Hostile")
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def setUp(self) -> defer.Deferred[None]:
        return support.as_deferred(self._start())

    async def send(
        self,
        target: bytes,
        body: bytes = BODY,
        provider: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        method: bytes = b"POST",
    ) -> raw_http.RawResponse:
        sent = [(b"X-Majordomo-Key", self.key.encode()), (b"Content-Type", b"application/json")]
        if provider is not None:
            sent.append((b"X-Majordomo-Provider", provider.encode()))
        data = raw_http.request_bytes(method, target, headers or sent, body)
        return await raw_http.send(self.port, data)

    async def rows(self, count: int) -> list[dict[str, Any]]:
        await self.gateway.writer.flush()

        def fetch() -> list[dict[str, Any]]:
            rows = support.run_sql(
                "SELECT row_to_json(r)::text FROM llm_requests r ORDER BY created_at"
            )
            return [json.loads(r[0]) for r in rows] if len(rows) >= count else []

        return await support.wait_for(fetch)


# Targets that would have left the configured origin (or that the gateway
# cannot forward as they are), with a path form to build them from.
def _hostile_targets(path: bytes, trap_port: int) -> list[bytes]:
    route, mark, query = path.lstrip(b"/").partition(b"?")
    query = mark + query
    more = b"&" if query else b"?"
    trap = str(trap_port).encode()
    return [
        b"1/" + route + query,  # http://127.0.0.1:P + "1/..." = port P*10+1, the trap
        b".evil.example/" + route + query,
        b"@127.0.0.1:" + trap + b"/" + route + query,
        b":" + trap + b"/" + route + query,
        b"http://127.0.0.1:" + trap + b"/" + route + query,  # absolute-form
        b"127.0.0.1:" + trap,  # authority-form
        b"/..;/" + route + query,
        b"/" + route + b"/../../admin" + query,
        b"/%2e%2e/" + route + query,
        b"/" + route.replace(b"/", b"\\", 1) + query,
        b"\\\\evil.example/" + route + query,
        b"/" + route + query + b"#fragment",
        b"/" + route + query + more + b"x=\x85",  # Agent refuses 0x7F-0xFF
        b"/" + route + b"\xb0" + query,
    ]


# Refused by twisted.web's request-line parser, before any header is read:
# a 400 (majordomo.web.limits answers it), with no key seen and so no row.
UNPARSED_TARGETS = [CHAT + b"\x01", CHAT + b"\x7f", CHAT + b"\x00"]


class RequestTargetTests(_Gateway):
    """Defect 1 and 5: the upstream is the configured origin, or there is no upstream request."""

    def test_no_target_leaves_the_origin(self) -> defer.Deferred[None]:
        """
        For every provider and path form, each hostile target gets 400 in the
        provider's error format and a row (status 400, not billed, cost 0);
        the trap on the port the old text-appended URL named gets nothing,
        and neither does the provider.
        """

        async def go() -> None:
            trap_port = self.upstream_port_trap()
            sent = 0
            for provider, path in PATH_FORMS:
                for target in _hostile_targets(path, trap_port):
                    response = await self.send(target, provider=provider)
                    sent += 1
                    self.assertEqual(response.status, 400, (provider, target))
                    _assert_error_format(self, provider, response.body, target)
            # The asterisk-form is refused like any other non-origin target.
            for method in (b"POST", b"OPTIONS"):
                response = await self.send(b"*", method=method)
                sent += 1
                self.assertEqual(response.status, 400, method)
                _assert_error_format(self, "openai", response.body, b"*")
            self.assertEqual(self.trap.received, [])
            self.assertEqual(self.upstream.received, [])
            rows = await self.rows(sent)
            self.assertEqual(len(rows), sent)
            for row in rows:
                self.assertEqual(row["status_code"], 400)
                self.assertEqual(row["usage_status"], "error_not_billed")
                self.assertEqual(float(row["total_cost"]), 0)
                self.assertTrue(row["error_message"])
            for target in UNPARSED_TARGETS:
                self.assertEqual((await self.send(target)).status, 400)
            self.assertEqual(self.trap.received + self.upstream.received, [])

        return support.as_deferred(go())

    def upstream_port_trap(self) -> int:
        return int(self.gateway.config.providers.base_url("openai").rsplit(":", 1)[1]) * 10 + 1

    def test_origin_form_reaches_the_provider(self) -> defer.Deferred[None]:
        """
        Origin-form targets, odd ones included ("//host/...", "@" in the
        path), go to the configured origin with the path as sent.
        """

        async def go() -> None:
            targets = [path for _, path in PATH_FORMS] + [
                b"//evil.example/v1/chat/completions",
                b"/v1/chat/completions@evil.example",
                b"/v1/models/a:b?x=http://evil.example/",
            ]
            for target in targets:
                response = await self.send(target, provider="openai")
                self.assertEqual(response.status, 200, target)
            self.assertEqual([r["uri"].encode() for r in self.upstream.received], targets)
            self.assertEqual(self.trap.received, [])

        return support.as_deferred(go())


class BasePathTests(_Gateway):
    """A base URL with a path keeps it: the request path is appended to it."""

    base_path = "/prefix"

    def test_path_appended(self) -> defer.Deferred[None]:
        async def go() -> None:
            for provider, path in PATH_FORMS:
                response = await self.send(path, provider=provider)
                self.assertEqual(response.status, 200)
            self.assertEqual(
                [r["uri"].encode() for r in self.upstream.received],
                [b"/prefix" + path for _, path in PATH_FORMS],
            )
            response = await self.send(b"/../v1/chat/completions", provider="openai")
            self.assertEqual(response.status, 400)
            self.assertEqual(len(self.upstream.received), len(PATH_FORMS))

        return support.as_deferred(go())


def _assert_error_format(case: TestCase, provider: str, body: bytes, sent: object = None) -> None:
    """The error is in the shape the provider's SDK parses."""
    error = json.loads(body)
    case.assertIsInstance(error, dict, sent)
    if provider == "anthropic":
        case.assertEqual(error.get("type"), "error", (sent, error))
        case.assertEqual(error["error"]["type"], "invalid_request_error")
    elif provider == "gemini":
        case.assertEqual(
            (error["error"]["code"], error["error"]["status"]), (400, "INVALID_ARGUMENT")
        )
    else:
        case.assertEqual(error["error"]["type"], "invalid_request_error")
    case.assertTrue(json.dumps(error).isascii())


class CallerHeaderTests(_Gateway):
    """Defects 5 and 6: one key per request, and a row for a provider refused."""

    def test_two_keys_refused_unchecked(self) -> defer.Deferred[None]:
        """
        Two X-Majordomo-Key headers, or one with a comma list, get 400 even
        when one of them is valid and the other not; no key is checked, so
        no row is written and nothing is forwarded.
        """

        async def go() -> None:
            key = self.key.encode()
            for headers in (
                [(b"X-Majordomo-Key", key), (b"X-Majordomo-Key", b"mdm_sk_invalid")],
                [(b"X-Majordomo-Key", b"mdm_sk_invalid"), (b"X-Majordomo-Key", key)],
                [(b"X-Majordomo-Key", key + b", mdm_sk_invalid")],
                [(b"X-Majordomo-Key", key), (b"x-majordomo-key", key)],
            ):
                response = await self.send(CHAT, headers=headers)
                self.assertEqual(response.status, 400, headers)
                self.assertIn(b"only once", response.body)
            self.assertEqual(self.upstream.received, [])
            await self.gateway.writer.flush()
            self.assertEqual(support.run_sql("SELECT count(*) FROM llm_requests"), [(0,)])

        return support.as_deferred(go())

    def test_unknown_provider_has_its_row(self) -> defer.Deferred[None]:
        """
        A valid key naming an unknown provider (or two) gets 400 in the path's
        provider format, and its row says why.
        """

        async def go() -> None:
            cases = [("mistral", CHAT), ("http://evil.example/", b"/v1/messages")]
            for provider, path in cases:
                response = await self.send(path, provider=provider)
                self.assertEqual(response.status, 400)
            headers = [
                (b"X-Majordomo-Key", self.key.encode()),
                (b"X-Majordomo-Provider", b"openai"),
                (b"X-Majordomo-Provider", b"anthropic"),
            ]
            response = await self.send(CHAT, headers=headers)
            self.assertEqual(response.status, 400)
            self.assertEqual(self.upstream.received, [])
            rows = await self.rows(3)
            self.assertEqual([r["provider"] for r in rows], ["openai", "anthropic", "openai"])
            self.assertEqual([r["status_code"] for r in rows], [400, 400, 400])
            self.assertIn("'mistral' is not configured", rows[0]["error_message"])

        return support.as_deferred(go())


def _nested(depth: int, stream: bool) -> bytes:
    head = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
    tail = b',"stream":true}' if stream else b"}"
    return head + b'"x":' + b"[" * depth + b"]" * depth + tail


class RequestBodyTests(_Gateway):
    """Defects 3 and 4: bodies reach the provider as sent, and the reactor keeps answering."""

    def test_deep_json_forwarded(self) -> defer.Deferred[None]:
        """
        JSON nested 1,000 and 100,000 deep is forwarded byte for byte (with
        only include_usage added to a stream) and gets its row, with the model.
        """

        async def go() -> None:
            bodies = [_nested(depth, stream) for depth in (1000, 100_000) for stream in (0, 1)]
            for body in bodies:
                response = await self.send(CHAT, body)
                self.assertEqual(response.status, 200)
            sent = [r["body"] for r in self.upstream.received]
            expected = [b if b"stream" not in b else b[:1] + INSERTED + b[1:] for b in bodies]
            self.assertEqual(sent, expected)
            rows = await self.rows(len(bodies))
            self.assertEqual([r["model_requested"] for r in rows], ["gpt-4o-mini"] * len(bodies))

        return support.as_deferred(go())

    def test_large_body_does_not_hold_the_reactor(self) -> defer.Deferred[None]:
        """
        While a 20 MiB streamed chat request (400,000 small messages) is read
        and forwarded, /health keeps answering within 100 ms; the provider
        gets the body with only include_usage added.
        """
        message = {"role": "user", "content": "hello there"}
        document = {"messages": [message] * 560_000, "model": "gpt-4o-mini", "stream": True}
        body = json.dumps(document, separators=(",", ":")).encode()
        self.assertGreater(len(body), 20 * 1024 * 1024)

        async def go() -> None:
            latencies: list[float] = []
            big = defer.ensureDeferred(self.send(CHAT, body))
            while not big.called:  # always one /health in flight
                started = time.perf_counter()
                health = await raw_http.send(self.port, HEALTH)
                latencies.append(time.perf_counter() - started)
                self.assertEqual(health.body, b"ok")
            self.assertEqual((await big).status, 200)
            self.assertGreater(len(latencies), 3)
            self.assertLess(max(latencies), 0.1, [round(x, 3) for x in latencies])
            self.assertEqual(self.upstream.received[0]["body"], body[:1] + INSERTED + body[1:])

        return support.as_deferred(go())


class LogLineTests(_Gateway):
    """Defect 7: caller and provider text cannot forge a log line."""

    def test_control_characters_escaped(self) -> defer.Deferred[None]:
        """
        A newline (and other controls) in the requested model, the model the
        provider reports, or the path stays on the request's one line.
        """
        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "request_line" in event:
                lines.append(event["request_line"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

        async def go() -> None:
            self.upstream.default = support.Canned(
                chunks=[support.chat_completion("gpt-4o\nPOST /forged 200 gpt-4o", 1, 1)]
            )
            forged = json.dumps({"model": "x\r\nPOST /forged 200", "messages": []}).encode()
            await self.send(CHAT, forged)
            self.upstream.default = support.Canned(status=500, chunks=[b"{}"])
            await self.send(CHAT, json.dumps({"model": "a\u2028b\x1b[2J"}).encode())
            await support.wait_for(lambda: len(lines) == 2)
            for line in lines:
                self.assertEqual(line.splitlines(), [line])
                self.assertNotIn("\x1b", line)
            self.assertIn("gpt-4o\\x0aPOST /forged", lines[0])
            self.assertIn("a\\u2028b\\x1b[2J", lines[1])

        return support.as_deferred(go())


class UnpricedWarningTests(SynchronousTestCase):
    """Item 8: the "no price" warnings keep a bounded set of names."""

    def test_bounded(self) -> None:
        warned: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(warned.append)
        self.addCleanup(globalLogPublisher.removeObserver, warned.append)
        unpriced = request_log.UnpricedModels()
        for i in range(1500):
            unpriced.note("openai", f"{i:05d}" + "m" * 50_000)
        unpriced.note("openai", "00001" + "m" * 50_000)
        self.assertEqual(len(unpriced.counts), request_log.MAX_UNPRICED_MODELS)
        self.assertEqual(unpriced.counts["openai", "00001" + "m" * 195], 2)
        warnings = [e for e in warned if e.get("log_namespace") == request_log.log.namespace]
        self.assertEqual(len(warnings), request_log.MAX_UNPRICED_MODELS + 1)
        self.assertLess(max(len(e.get("model", "")) for e in warnings), 300)


class IncludeUsageSpliceTests(SynchronousTestCase):
    """include_usage is spliced into the bytes; nothing else in the body changes."""

    def test_spliced(self) -> None:
        on = b'{"include_usage":true}'
        cases = [  # (body, what is replaced, by what)
            (b' {"stream": true, "a": "\\u00e9\xc3\xa9"}', b"{", b"{" + INSERTED),
            (b'{"stream_options": null, "stream": true}', b"null", on),
            (b'{"stream_options": {}, "stream": true}', b"{}", on),
            (b'{"stream_options": {"x": 1}, "stream": true}', b'{"x"', on[:-1] + b',"x"'),
            (
                b'{"stream_options": {"include_usage" : false }, "stream": true}',
                b": false",
                b": true",
            ),
        ]
        for body, old, new in cases:
            expected = body.replace(old, new, 1)
            self.assertEqual(inject_include_usage(body), (expected, True), body)
            located = request_fields.read_now(body)
            self.assertEqual(inject_include_usage(body, located), (expected, True), body)

    def test_last_duplicate_counts(self) -> None:
        """As JSON parsers do, the last of two members of one name counts."""
        body = b'{"stream": false, "stream": true, "stream_options": 1, "stream_options": null}'
        self.assertEqual(
            inject_include_usage(body)[0],
            body.replace(b'"stream_options": null', b'"stream_options": {"include_usage":true}'),
        )
        self.assertFalse(inject_include_usage(b'{"stream": true, "stream": false}')[1])
