"""
A hostile provider cannot freeze or bloat the gateway (issue 11, defect 2).

A real gateway process (twistd) in front of a hostile upstream process
(L{tests.hostile_upstream}): while gzip bombs stream through it (an event
stream that inflates to 64 MiB of newlines, one of carriage returns, one of
tiny events, a JSON answer that inflates to 128 MiB of whitespace), other
clients' requests stay prompt; SIGTERM stops it within its shutdown timeout
while an endless bomb streams; and clients that stop reading a gzip answer
that inflates to gigabytes hold little of the gateway's memory.  Every
bombed request has its row, with the usage the bomb reported.
"""

from __future__ import annotations

import math
import signal
import time
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.python.failure import Failure

from bench.stream_latency import rss_kb
from tests import hostile_upstream, support
from tests.test_durability import GatewayProcessCase

MiB = 1024 * 1024
PROBES = 100  # of each kind; p99 is the second-slowest
P99_BOUND_MS = 50.0
RSS_BOUND_KB = 64 * 1024  # above the gateway's RSS before the clients came
SHUTDOWN_TIMEOUT = 2.0
# (mode, decoded size): each inflates from kilobytes.
STREAM_BOMBS = [("gzip-newlines", 64 * MiB), ("gzip-crs", 16 * MiB), ("gzip-events", 4 * MiB)]
# 128 MiB of whitespace before the usage (read), 64 MiB of members (too dense to read).
JSON_BOMBS = [("gzip-json", 128 * MiB), ("gzip-dense", 64 * MiB)]
JSON_MODES = {mode for mode, _ in JSON_BOMBS}
HEALTH = b"GET /health HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"


def chat_request(key: str, mode: str, size: int = 0, stream: bool = False) -> bytes:
    """A raw chat request through the gateway to the hostile upstream in C{mode}."""
    body = b'{"model": "gpt-4o-mini", "stream": %s, "messages": []}' % (
        b"true" if stream else b"false"
    )
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nX-Majordomo-Key: {key}\r\n"
        f"X-Hostile-Mode: {mode}\r\nX-Hostile-Size: {size}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class Exchange(protocol.Protocol):
    """
    One request on its own connection.  Keeps the start and the end of the
    answer and counts the rest; with C{reading=False} it stops reading once
    the answer has begun, as a stalled client does.
    """

    def __init__(self, request: bytes, reading: bool = True) -> None:
        self.request, self.reading = request, reading
        self.head, self.tail, self.received = b"", b"", 0
        self.done: defer.Deferred[Exchange] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if len(self.head) < 4096:
            self.head += data[:4096]
        self.tail = (self.tail + data)[-4096:]
        if not self.reading:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.done.callback(self)


async def open_exchange(port: int, request: bytes, reading: bool = True) -> Exchange:
    exchange = Exchange(request, reading)
    await protocol.ClientCreator(reactor, lambda: exchange).connectTCP("127.0.0.1", port)
    return exchange


async def exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[float, Exchange]:
    """Send C{request}; return the seconds until the whole answer came, and the exchange."""
    started = time.monotonic()
    sent = await open_exchange(port, request)
    await sent.done.addTimeout(timeout, reactor)
    return time.monotonic() - started, sent


def p99_ms(seconds: list[float]) -> float:
    """The 99th percentile (nearest rank), in milliseconds."""
    return sorted(seconds)[math.ceil(len(seconds) * 0.99) - 1] * 1000


class BombTests(GatewayProcessCase):
    """`twistd -n majordomo` against `python -m tests.hostile_upstream`."""

    timeout = 240

    def setUp(self) -> None:
        support.fresh_database()
        upstream, port = hostile_upstream.spawn()
        self.addCleanup(self._kill, upstream)
        self.env = support.test_env(
            MAJORDOMO_PROVIDERS_OPENAI_BASE_URL=f"http://127.0.0.1:{port}",
            MAJORDOMO_SERVER_SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        )
        self.key = support.create_key(self.env, "bombs")

    async def _gateway(self) -> tuple[Any, int]:
        process, url = await self.start_gateway()
        return process, int(url.rsplit(":", 1)[1])

    def test_other_requests_stay_prompt(self) -> defer.Deferred[None]:
        """
        While bombs stream back to back (two at a time, each read whole by its
        client), 100 C{/health} probes and 100 normal requests each keep a p99
        under 50 ms.  Each bomb's client gets the whole answer, and each bomb
        has its row with the usage the bomb reported at its end.
        """

        async def go() -> None:
            _, port = await self._gateway()
            running = [True]
            bombs: list[tuple[str, float, Exchange]] = []

            async def bomb_loop(kinds: list[tuple[str, int]]) -> None:
                while running[0]:
                    for mode, size in kinds:
                        stream = mode not in JSON_MODES
                        took, sent = await exchange(
                            port, chat_request(self.key, mode, size, stream), timeout=120
                        )
                        bombs.append((mode, took, sent))

            loops = [
                defer.Deferred.fromCoroutine(bomb_loop(STREAM_BOMBS)),
                defer.Deferred.fromCoroutine(bomb_loop(JSON_BOMBS)),
            ]
            await support.sleep(0.2)
            health, chat = [], []
            for _ in range(PROBES):
                health.append((await exchange(port, HEALTH))[0])
                took, answer = await exchange(port, chat_request(self.key, "chat"))
                self.assertIn(b" 200 ", answer.head[:20])
                chat.append(took)
                await support.sleep(0.01)
            running[0] = False
            await defer.gatherResults(loops)

            print(
                f"\n/health p99 {p99_ms(health):.1f} ms, chat p99 {p99_ms(chat):.1f} ms; "
                + ", ".join(f"{mode} {took:.2f}s" for mode, took, _ in bombs)
            )
            self.assertGreaterEqual(len(bombs), 4)
            self.assertLess(p99_ms(health), P99_BOUND_MS)
            self.assertLess(p99_ms(chat), P99_BOUND_MS)
            for mode, _, sent in bombs:
                size = dict(STREAM_BOMBS + JSON_BOMBS)[mode]
                self.assertGreater(sent.received, size, mode)
                if mode in JSON_MODES:
                    self.assertTrue(sent.tail.endswith(b"}\r\n0\r\n\r\n"), mode)
                else:
                    # The usage chunk the gateway asked for is not the client's.
                    self.assertTrue(sent.tail.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), mode)
                    self.assertNotIn(b'"usage"', sent.tail, mode)

            expected = PROBES + len(bombs)
            rows = await support.wait_for(
                lambda: (
                    rows
                    if len(
                        rows := support.run_sql(
                            "SELECT usage_status, input_tokens, output_tokens FROM llm_requests"
                        )
                    )
                    >= expected
                    else None
                ),
                timeout=30,
            )
            # A JSON answer of any size has its usage read, unless its
            # structure is denser than any API answer: then it is let through
            # unread, and its row says so, with unknown counts.
            dense = sum(mode == "gzip-dense" for mode, _, _ in bombs)
            self.assertEqual(
                sorted(rows, key=str),
                sorted(
                    [("complete", 11, 7)] * (expected - dense)
                    + [("unparseable", None, None)] * dense,
                    key=str,
                ),
            )

        return support.as_deferred(go())

    def test_sigterm_during_endless_bomb(self) -> defer.Deferred[None]:
        """
        SIGTERM while an endless gzip stream of newlines pours through: the
        gateway exits within its shutdown timeout (plus a few seconds to
        close), and the cut request's row is written before it exits.
        """

        async def go() -> None:
            process, port = await self._gateway()
            sent = await open_exchange(port, chat_request(self.key, "gzip-endless", stream=True))
            await support.wait_for(lambda: sent.received > 32 * MiB, timeout=30)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            await support.wait_for(lambda: process.poll() is not None, timeout=60)
            took = time.monotonic() - started
            print(f"\nexited {took:.2f}s after SIGTERM, {sent.received / MiB:.0f} MiB relayed")
            self.assertLess(took, SHUTDOWN_TIMEOUT + 5)
            self.assertIn(process.returncode, (0, -signal.SIGTERM))
            # The request cut by the shutdown has its row, written before exit.
            (row,) = support.run_sql("SELECT status_code, error_message FROM llm_requests")
            self.assertEqual(row[0], 200)
            self.assertIsNotNone(row[1])

        return support.as_deferred(go())

    def test_stalled_clients_hold_little_memory(self) -> defer.Deferred[None]:
        """
        Eight clients ask for a gzip answer that inflates to 1 GiB (1 MB on
        the wire) and stop reading once it begins: the gateway's RSS stays
        within 64 MB of where it was, and it answers C{/health} meanwhile.
        When the clients go, each request has its row.
        """

        async def go() -> None:
            process, port = await self._gateway()
            await exchange(port, chat_request(self.key, "chat"))
            before = rss_kb(process.pid)
            request = chat_request(self.key, "gzip-json", 1024 * MiB)
            stalled = [await open_exchange(port, request, reading=False) for _ in range(8)]
            await support.wait_for(lambda: all(s.received for s in stalled), timeout=30)
            peak = before
            for _ in range(30):
                await support.sleep(0.1)
                peak = max(peak, rss_kb(process.pid))
            took, _ = await exchange(port, HEALTH)
            print(f"\nRSS {before} KB -> peak {peak} KB with 8 stalled clients")
            self.assertLess(peak - before, RSS_BOUND_KB)
            self.assertLess(took, 1.0)
            for sent in stalled:
                sent.transport.loseConnection()  # type: ignore[union-attr]
            rows = await support.wait_for(
                lambda: len(support.run_sql("SELECT id FROM llm_requests")) == 9, timeout=30
            )
            self.assertTrue(rows)

        return support.as_deferred(go())
