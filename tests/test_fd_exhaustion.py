"""
A gateway that runs out of file descriptors recovers when they come back:
real `twistd majordomo` processes with a low RLIMIT_NOFILE (soft = hard, so
raising it cannot help), an upstream reached by the name C{localhost} (so the
resolver runs), and a burst of more connections than descriptors as the
gateway's first traffic.

While descriptors are exhausted every request ends promptly (a 502 with its
row, or a closed connection; never a wait until upstream.response_timeout),
C{/readyz} says 503 and why, and the process does not spin on its listening
socket.  Afterwards requests are forwarded again, with their rows, and
C{/readyz} says 200.  Also: nothing the forwarding path needs is imported
after startup (a failed import under exhaustion used to stay failed), and the
soft limit is raised to the hard one at start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import defer, protocol, reactor, ssl, task
from twisted.internet.error import DNSLookupError
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from majordomo.web import listening
from majordomo.web.listening import listen_tcp
from majordomo.web.upstream import LOCAL_FAILURES_UNREADY, UpstreamClient
from tests import support
from tests.raw_http import parse, request_bytes, send
from tests.test_tap import free_port
from tests.test_upstream import self_signed_localhost

LIMIT = 256  # the gateway's RLIMIT_NOFILE, soft and hard
BURST = 450  # concurrent requests, more than LIMIT
RESPONSE_TIMEOUT = 30.0  # a request that waited for it would show as a hang
PROMPT = 8.0  # every refusal comes well within this (connects may retry a SYN)
CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}'


class HeldUpstream(Resource):
    """An OpenAI-like upstream that holds every answer while C{holding}."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.holding = True
        self.held: list[Any] = []

    def render_POST(self, request: Any) -> Any:
        if not self.holding:
            return self._answer(request)
        self.held.append(request)
        request.notifyFinish().addErrback(lambda _: None)
        return NOT_DONE_YET

    def release(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for request in held:
            if not request._disconnected:
                request.write(self._answer(request))
                request.finish()

    def _answer(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return support.chat_completion("gpt-4o-mini", 3, 4)


class Exchange(protocol.Protocol):
    """One request on a new connection; notes how it ended and when."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = bytearray()
        self.started = reactor.seconds()
        self.done: defer.Deferred[tuple[int, float]] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        status = parse(bytes(self.received)).status if self.received else 0  # 0: closed
        self.done.callback((status, reactor.seconds() - self.started))


class Probe(protocol.Protocol):
    """A kept-alive connection that asks for small answers one at a time."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: defer.Deferred[tuple[int, bytes]] | None = None

    def ask(self, path: str) -> defer.Deferred[tuple[int, bytes]]:
        self.waiting = defer.Deferred()
        self.transport.write(  # type: ignore[union-attr]
            f"GET {path} HTTP/1.1\r\nHost: gateway.test\r\n\r\n".encode()
        )
        return self.waiting

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        head, sep, body = self.buffer.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        if sep and length and len(body) >= int(length[1]) and self.waiting is not None:
            waiting, self.waiting, self.buffer = self.waiting, None, b""
            waiting.callback((parse(head + sep + body).status, body[: int(length[1])]))


def out_of_descriptors(ready: tuple[int, dict[str, Any]]) -> bool:
    """Whether a /readyz answer says the gateway is out of descriptors."""
    status, body = ready
    return status == 503 and re.search("file descriptors|open files", body["reason"]) is not None


def row_counts() -> dict[int, int]:
    """Rows in llm_requests, by status code."""
    rows = support.run_sql("SELECT status_code, count(*) FROM llm_requests GROUP BY 1")
    return {int(status): int(n) for status, n in rows}


def open_files(pid: int) -> int:
    """How many descriptors process C{pid} has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """utime + stime of process C{pid}, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class GatewayProcess:
    """`twistd -n majordomo` with RLIMIT_NOFILE set to C{(soft, hard)}, log in a file."""

    def __init__(self, env: dict[str, str], soft: int, hard: int, python_flags: tuple = ()):
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        directory = tempfile.mkdtemp(prefix="majordomo-fd-")
        self.log_path = os.path.join(directory, "stdout")
        self.stderr_path = os.path.join(directory, "stderr")
        command = [sys.executable, *python_flags, support.TWISTD_BIN]
        with open(self.log_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [*command, "--nodaemon", "--pidfile=", "majordomo"],
                env=env,
                stdout=out,
                stderr=err,
                preexec_fn=limit,
            )

    def output(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    async def started(self) -> None:
        await support.wait_for(lambda: "Pricing data loaded" in self.output(), timeout=30)

    async def explained(self, test: Any) -> None:
        """Run C{test}; a failure says how the gateway's log ends."""
        try:
            await test
        except AssertionError as e:
            raise AssertionError(
                f"{e}\n--- gateway log, last lines:\n{self.output()[-4000:]}"
            ) from e

    async def stop(self) -> None:
        """SIGTERM, and wait (with the reactor running: the upstream is in this process)."""
        self.process.terminate()
        deadline = reactor.seconds() + 30
        while self.process.poll() is None and reactor.seconds() < deadline:
            await support.sleep(0.05)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class ExhaustionTests(TestCase):
    """A burst beyond RLIMIT_NOFILE as the first traffic of a real gateway process."""

    timeout = 120
    reuse_port = "false"

    def setUp(self) -> defer.Deferred[None]:
        support.fresh_database()
        self.upstream = HeldUpstream()
        listening = reactor.listenTCP(0, Site(self.upstream), interface="127.0.0.1", backlog=1024)
        self.addCleanup(listening.stopListening)
        self.port = free_port()
        env = support.test_env(
            MAJORDOMO_SERVER_PORT=str(self.port),
            MAJORDOMO_SERVER_REUSE_PORT=self.reuse_port,
            MAJORDOMO_PROVIDERS_OPENAI_BASE_URL=f"http://localhost:{listening.getHost().port}",
            MAJORDOMO_UPSTREAM_RESPONSE_TIMEOUT=str(RESPONSE_TIMEOUT),
        )
        self.key = support.create_key(env, "burst")
        self.gateway = GatewayProcess(env, LIMIT, LIMIT)
        self.addCleanup(lambda: support.as_deferred(self.gateway.stop()))
        self.addCleanup(self.upstream.release)  # first: the gateway's requests end
        return support.as_deferred(self.gateway.started())

    def connect(self, client: protocol.Protocol) -> defer.Deferred[Any]:
        return protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", self.port)

    def chat(self) -> Exchange:
        headers = [(b"X-Majordomo-Key", self.key.encode()), (b"Content-Type", b"application/json")]
        exchange = Exchange(request_bytes(b"POST", b"/v1/chat/completions", headers, CHAT))
        self.connect(exchange).addErrback(lambda f: exchange.done.callback((-1, 0.0)))
        return exchange

    async def ready(self, probe: Probe) -> tuple[int, dict[str, Any]]:
        status, body = await probe.ask("/readyz")
        return status, json.loads(body)

    def test_burst_beyond_the_descriptor_limit(self) -> defer.Deferred[None]:
        """
        450 requests at once through a gateway allowed 256 descriptors: those
        it could not forward end promptly (502 with a row, or a closed
        connection), /readyz says 503 while descriptors are exhausted, the
        process stays nearly idle meanwhile (no accept spin), and once the
        held answers are released requests are forwarded again, with rows,
        and /readyz says 200.
        """

        async def go() -> None:
            probe = Probe()
            await self.connect(probe)
            self.assertEqual((await self.ready(probe))[0], 200)

            # The burst, and more all along (a forwarded request holds two
            # descriptors until the upstream answers; one refused frees its own).
            burst = [self.chat() for _ in range(BURST)]
            pressure = task.LoopingCall(lambda: burst.extend(self.chat() for _ in range(10)))
            pressure.start(0.2)
            self.addCleanup(lambda: pressure.running and pressure.stop())
            deadline = reactor.seconds() + 20
            while not out_of_descriptors(ready := await self.ready(probe)):
                self.assertLess(reactor.seconds(), deadline, f"/readyz did not say so: {ready}")
                await support.sleep(0.1)
            self.assertGreater(open_files(self.gateway.process.pid), LIMIT - 16)

            # Held exhaustion, new connections still arriving: little CPU.
            pid = self.gateway.process.pid
            before, started = cpu_seconds(pid), reactor.seconds()
            await support.sleep(2.0)
            used = cpu_seconds(pid) - before
            self.assertLess(used, 0.4 * (reactor.seconds() - started), f"{used:.2f}s of CPU")
            pressure.stop()

            self.upstream.release()
            outcomes = [await e.done for e in burst]
            by_status: dict[int, int] = {}
            for status, took in outcomes:
                by_status[status] = by_status.get(status, 0) + 1
                if status != 200:
                    self.assertLess(took, PROMPT, f"a {status} took {took:.1f}s ({by_status})")
            self.assertLessEqual(set(by_status), {200, 502, 503, 0}, by_status)
            self.assertGreater(by_status.get(200, 0), 20, by_status)

            deadline = reactor.seconds() + 15
            while (await self.ready(probe))[0] != 200:
                self.assertLess(reactor.seconds(), deadline, "/readyz stayed 503")
                await support.sleep(0.1)
            for _ in range(3):
                status, took = await self.chat().done
                self.assertEqual(status, 200)
            # Every answered request has its row: the 502s, and the 200s.
            expected = {502: by_status.get(502, 0), 200: by_status.get(200, 0) + 3}
            expected = {status: n for status, n in expected.items() if n}
            with contextlib.suppress(AssertionError):
                await support.wait_for(lambda: row_counts() == expected, timeout=20)
            self.assertEqual(row_counts(), expected)

        return support.as_deferred(self.gateway.explained(go()))


class SharedPortExhaustionTests(ExhaustionTests):
    """The same, listening on a shared socket (server.reuse_port, as --workers does)."""

    reuse_port = "true"


STREAM = [
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n',
    b"data: [DONE]\n\n",
]


class FirstRequestsImportNothingTests(TestCase):
    """What a request needs is loaded at startup, not by the first requests."""

    timeout = 60

    def setUp(self) -> defer.Deferred[None]:
        support.fresh_database()
        json_answer = support.chat_completion("gpt-4o-mini", 3, 4)
        self.plain = support.FakeProvider(support.Canned(chunks=[json_answer]))
        self.plain.queue = [
            support.Canned(chunks=[json_answer]),
            support.Canned(headers={"Content-Type": "text/event-stream"}, chunks=STREAM),
            support.Canned(chunks=[json_answer], gzip=True),
        ]
        plain = support.listen(self.plain)
        self.addCleanup(plain.stopListening)
        cert_pem, key_pem = self_signed_localhost()
        trusted = os.path.join(tempfile.mkdtemp(prefix="majordomo-fd-"), "localhost.pem")
        with open(trusted, "wb") as f:
            f.write(cert_pem)
        server = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem)
        tls = reactor.listenSSL(
            0, Site(support.FakeProvider()), server.options(), interface="127.0.0.1"
        )
        self.addCleanup(tls.stopListening)
        self.port = free_port()
        env = support.test_env(
            MAJORDOMO_SERVER_PORT=str(self.port),
            MAJORDOMO_PROVIDERS_OPENAI_BASE_URL=f"http://localhost:{plain.getHost().port}",
            MAJORDOMO_PROVIDERS_GEMINI_BASE_URL=f"http://localhost:{plain.getHost().port}",
            MAJORDOMO_PROVIDERS_ANTHROPIC_BASE_URL=f"https://localhost:{tls.getHost().port}",
            MAJORDOMO_PROVIDERS_AZURE_BASE_URL=f"http://localhost:{free_port()}",  # nobody there
            SSL_CERT_FILE=trusted,  # the system's trust roots, as the gateway sees them
        )
        self.key = support.create_key(env, "imports")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.gateway = GatewayProcess(env, soft, hard, python_flags=("-X", "importtime"))
        self.addCleanup(lambda: support.as_deferred(self.gateway.stop()))
        return support.as_deferred(self.gateway.started())

    async def post(self, path: bytes, body: bytes, provider: bytes = b"") -> int:
        headers = [(b"X-Majordomo-Key", self.key.encode()), (b"Content-Type", b"application/json")]
        if provider:
            headers.append((b"X-Majordomo-Provider", provider))
        return (await send(self.port, request_bytes(b"POST", path, headers, body))).status

    def test_first_requests_import_nothing(self) -> defer.Deferred[None]:
        """
        After startup, the first requests (OpenAI JSON, stream and gzip over
        HTTP, Anthropic over HTTPS, Gemini, an unreachable Azure, a refused
        key) and the writing of their rows import no module: each import
        python -X importtime reports would have been one that fails, and may
        stay failed, when no file descriptor is free.
        """

        async def go() -> None:
            await support.sleep(0.5)  # startup's last callbacks
            imported_at_start = len(self.gateway.stderr())
            chat = b'{"model": "gpt-4o-mini", "messages": []}'
            streamed = b'{"model": "gpt-4o-mini", "messages": [], "stream": true}'
            gemini = b"/v1beta/models/gemini-2.0-flash:generateContent"
            azure = b"/openai/deployments/d/chat/completions?api-version=2024-10-21"
            statuses = [
                await self.post(b"/v1/chat/completions", chat),
                await self.post(b"/v1/chat/completions", streamed),
                await self.post(b"/v1/chat/completions", chat),
                await self.post(b"/v1/messages", b'{"model": "claude-3-5-haiku-latest"}'),
                await self.post(gemini, b'{"contents": []}'),
                await self.post(azure, chat, b"azure"),
            ]
            refused = request_bytes(b"POST", b"/v1/chat/completions", [], chat)
            statuses.append((await send(self.port, refused)).status)
            self.assertEqual(statuses, [200, 200, 200, 200, 200, 502, 401])
            await support.wait_for(lambda: sum(row_counts().values()) == 6, timeout=15)
            await support.sleep(0.5)
            late = self.gateway.stderr()[imported_at_start:]
            self.assertEqual(re.findall(r"(?m)^import time:.*\|\s+(\S+)$", late), [])

        return support.as_deferred(self.gateway.explained(go()))


class LimitRaisedTests(TestCase):
    """The soft RLIMIT_NOFILE goes up to the hard limit at start, and the log says so."""

    timeout = 60

    def test_soft_limit_raised_to_hard(self) -> defer.Deferred[None]:
        """Started with soft 200 and hard 400, the gateway runs with 400 and logs it."""
        support.fresh_database()
        env = support.test_env(MAJORDOMO_SERVER_PORT=str(free_port()))
        gateway = GatewayProcess(env, 200, 400)
        self.addCleanup(lambda: support.as_deferred(gateway.stop()))

        async def go() -> None:
            await gateway.started()
            await support.wait_for(lambda: "File descriptor limit" in gateway.output())
            self.assertIn("File descriptor limit: 400 (raised from 200)", gateway.output())
            with open(f"/proc/{gateway.process.pid}/limits") as f:
                self.assertRegex(f.read(), r"Max open files\s+400\s+400\s")

        return support.as_deferred(gateway.explained(go()))


class RefusingAccept:
    """A listening socket whose accept() fails with EMFILE while C{refusing}."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.refusing = True
        self.calls = 0

    def accept(self) -> Any:
        self.calls += 1
        if self.refusing:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return self.real.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class BackoffPortTests(TestCase):
    """The listening port pauses, instead of spinning, while accept() finds no descriptor."""

    def test_backs_off_then_accepts_again(self) -> defer.Deferred[None]:
        """
        With a connection queued and accept() failing, the port tries a few
        times a second (not thousands: the socket stays readable), says so
        once, and accepts the connection within a second once it can.
        """
        accepted: list[Any] = []
        factory = protocol.Factory.forProtocol(protocol.Protocol)
        factory.buildProtocol = lambda addr: accepted.append(addr) or protocol.Protocol()  # type: ignore[method-assign]
        port = listen_tcp(reactor, 0, factory, "127.0.0.1")
        self.addCleanup(port.stopListening)
        refusing = RefusingAccept(port.socket._socket)
        port.socket._socket = refusing

        async def go() -> None:
            with capturedLogs() as events:
                client = await protocol.ClientCreator(reactor, protocol.Protocol).connectTCP(
                    "127.0.0.1", port.getHost().port
                )
                self.addCleanup(client.transport.loseConnection)
                await support.sleep(1.0)
                self.assertLess(refusing.calls, 60)
                self.assertEqual(accepted, [])
                refusing.refusing = False
                await support.wait_for(lambda: accepted, timeout=1.5)
            messages = [
                formatEvent(e) for e in events if e.get("log_namespace") == listening.__name__
            ]
            self.assertEqual(len(messages), 2, messages)
            self.assertIn("Cannot accept connections: Too many open files", messages[0])
            self.assertIn("Accepting connections again", messages[1])

        return support.as_deferred(go())


class ResolverFailureTests(TestCase):
    """A resolver that raises fails the request at once, and /readyz hears of it."""

    def test_resolver_exception_fails_promptly(self) -> defer.Deferred[None]:
        """
        getaddrinfo raising what it raises out of descriptors (OSError EMFILE)
        or with the IDNA codec missing (LookupError) fails each request with
        DNSLookupError (the proxy's 502 "could not be reached") within a
        second, not at the 30 s response timeout; after three, the client
        says it cannot forward, and why.
        """

        errors = [
            OSError(errno.EMFILE, "Too many open files"),
            LookupError("unknown encoding: idna"),
        ]
        errors.append(errors[-1])

        def broken(*args: Any) -> Any:
            raise errors.pop(0)

        client = UpstreamClient(reactor, 4, 5.0, getaddrinfo=broken)
        self.addCleanup(client.close)

        async def go() -> None:
            for _ in range(LOCAL_FAILURES_UNREADY):
                self.assertIsNone(client.cannot_forward())
                started = reactor.seconds()
                with self.assertRaises(DNSLookupError):
                    await client.request(
                        b"POST", b"http://upstream.test/v1", Headers(), b"{}", 30.0
                    )
                self.assertLess(reactor.seconds() - started, 1.0)
            self.assertIn("unknown encoding: idna", client.cannot_forward() or "")

        return support.as_deferred(go())
