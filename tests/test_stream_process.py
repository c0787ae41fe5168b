"""
A long stream through a real gateway process (twistd): it arrives chunk by
chunk and the gateway's memory does not grow with it.  Latency numbers come
from bench/stream_latency.py, not from here.
"""

from __future__ import annotations

import subprocess

from twisted.internet import defer, protocol, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from bench.stream_latency import PacedStream, TimingClient, http_request, rss_kb
from tests import support
from tests.test_tap import free_port

CHUNKS = 2000


class LongStreamTests(TestCase):
    """2,000 chunks through `twistd -n majordomo`."""

    timeout = 120

    def setUp(self) -> defer.Deferred[None]:
        support.fresh_database()
        self.upstream = reactor.listenTCP(
            0, Site(PacedStream(CHUNKS, 0.001)), interface="127.0.0.1"
        )
        self.addCleanup(self.upstream.stopListening)
        self.port = free_port()
        env = support.test_env(
            MAJORDOMO_SERVER_PORT=str(self.port),
            MAJORDOMO_PROVIDERS_OPENAI_BASE_URL=f"http://127.0.0.1:{self.upstream.getHost().port}",
        )
        self.key = support.create_key(env, "stream")
        self.gateway = subprocess.Popen(
            [support.TWISTD_BIN, "--nodaemon", "--pidfile=", "majordomo"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.addCleanup(self._stop)
        return support.as_deferred(self._wait_listening())

    def _stop(self) -> None:
        self.gateway.terminate()
        self.gateway.wait(30)
        if self.gateway.stdout is not None:
            self.gateway.stdout.close()

    async def _wait_listening(self) -> None:
        for _ in range(300):
            try:
                client = await protocol.ClientCreator(reactor, protocol.Protocol).connectTCP(
                    "127.0.0.1", self.port
                )
                client.transport.loseConnection()
                return
            except Exception:
                await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("the gateway did not start listening")

    def test_long_stream(self) -> defer.Deferred[None]:
        """
        All 2,000 chunks arrive, in hundreds of separate reads (not one buffered
        blob), the gateway's RSS stays within 4 MB of where it started, and the
        row records the whole stream's usage.
        """

        async def go() -> None:
            rss_before = rss_kb(self.gateway.pid)
            peak = [rss_before]
            sampler = task.LoopingCall(lambda: peak.append(rss_kb(self.gateway.pid)))
            sampler.start(0.05)
            client = TimingClient(http_request(self.key))
            reads = [0]
            received = client.dataReceived

            def counting(data: bytes) -> None:
                reads[0] += 1
                received(data)

            client.dataReceived = counting  # type: ignore[method-assign]
            await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", self.port)
            await client.done
            sampler.stop()
            self.assertEqual(len(client.latencies), CHUNKS)
            self.assertGreater(reads[0], 200)
            self.assertLess(max(peak) - rss_before, 4 * 1024, f"RSS {rss_before} -> {max(peak)} KB")
            rows = await support.wait_for(
                lambda: support.run_sql("SELECT output_tokens, usage_status FROM llm_requests")
            )
            self.assertEqual(rows, [(CHUNKS, "complete")])

        return support.as_deferred(go())
