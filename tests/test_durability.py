"""
No lost row: a gateway killed with SIGKILL, stopped with SIGTERM, or facing a
PostgreSQL restart under load still records every request its clients got an
answer to.  Real gateway processes, a real PostgreSQL restart.
"""

from __future__ import annotations

import os
import signal
import subprocess

import treq
from twisted.internet import defer, reactor, task, utils
from twisted.trial.unittest import TestCase

from tests import support
from tests.gateway_case import GatewayTestCase
from tests.test_tap import free_port

CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}'


class Load:
    """C{concurrency} clients sending requests back to back until stopped."""

    def __init__(self, url: str, key: str, concurrency: int) -> None:
        self.url, self.key = url, key
        self.running = True
        self.completed: list[str] = []  # request ids of whole 200 answers
        self.failed: list[str] = []
        self.done = defer.gatherResults(
            [defer.Deferred.fromCoroutine(self._client()) for _ in range(concurrency)]
        )

    async def _client(self) -> None:
        while self.running:
            try:
                response = await treq.post(
                    self.url + "/v1/chat/completions",
                    CHAT,
                    headers={"X-Majordomo-Key": [self.key], "Content-Type": ["application/json"]},
                    persistent=False,
                )
                body = await response.content()
            except Exception as e:
                self.failed.append(repr(e))
                await task.deferLater(reactor, 0.02, lambda: None)
                continue
            if response.code == 200 and body.endswith(b"}"):
                self.completed.append(
                    response.headers.getRawHeaders(b"x-majordomo-request-id")[0].decode()
                )
            else:
                self.failed.append(f"{response.code} {body[:200]!r}")

    async def stop(self) -> None:
        self.running = False
        await self.done


def row_ids() -> set[str]:
    return {r[0] for r in support.run_sql("SELECT id::text FROM llm_requests")}


class GatewayProcessCase(TestCase):
    """Runs gateway processes (twistd) against a fake provider in this process."""

    timeout = 120

    def setUp(self) -> None:
        support.fresh_database()
        self.upstream = support.FakeProvider(
            support.Canned(chunks=[support.chat_completion("gpt-4o-mini-2024-07-18", 19, 10)])
        )
        port = support.listen(self.upstream)
        self.addCleanup(port.stopListening)
        self.spool = os.path.abspath(self.mktemp())
        self.env = support.test_env(
            MAJORDOMO_PROVIDERS_OPENAI_BASE_URL=f"http://127.0.0.1:{port.getHost().port}",
            MAJORDOMO_STORAGE_SPOOL_DIR=self.spool,
        )
        self.key = support.create_key(self.env, "durability")

    async def start_gateway(self, **env: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        process = subprocess.Popen(
            [support.TWISTD_BIN, "--nodaemon", "--pidfile=", "majordomo"],
            env={**self.env, "MAJORDOMO_SERVER_PORT": str(port), **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(self._kill, process)
        url = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            try:
                response = await treq.get(url + "/readyz", persistent=False)
                await response.content()
                return bool(response.code == 200)
            except Exception:
                return False

        for _ in range(200):
            if await ready():
                return process, url
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("the gateway did not become ready")

    @staticmethod
    def _kill(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.kill()
        process.wait()


class CrashTests(GatewayProcessCase):
    """SIGKILL under load."""

    def test_sigkill_loses_no_answered_request(self) -> defer.Deferred[None]:
        """
        With rows held back (a long flush interval), SIGKILL the gateway under
        load; the next gateway on the same spool writes a row for every
        request whose client got a whole answer.
        """

        async def go() -> None:
            slow_writes = {
                "MAJORDOMO_STORAGE_FLUSH_INTERVAL": "60s",
                "MAJORDOMO_STORAGE_BATCH_SIZE": "100000",
            }
            first, url = await self.start_gateway(**slow_writes)
            load = Load(url, self.key, concurrency=8)
            await support.wait_for(lambda: len(load.completed) >= 200, timeout=30)
            first.send_signal(signal.SIGKILL)
            first.wait()
            await load.stop()
            answered = set(load.completed)
            self.assertGreaterEqual(len(answered), 200)
            self.assertEqual(row_ids(), set(), "rows were written before the kill")

            await self.start_gateway()
            await support.wait_for(lambda: answered <= row_ids(), timeout=30)
            count = support.run_sql("SELECT request_count FROM api_keys")[0][0]
            self.assertEqual(count, len(row_ids()))

        return support.as_deferred(go())


class ShutdownTests(GatewayProcessCase):
    """SIGTERM under load."""

    def test_sigterm_drains_in_flight_requests(self) -> defer.Deferred[None]:
        """
        SIGTERM while 20 slow requests (2 s each) are in flight: every one
        completes with 200, every one has its row, and the process exits cleanly.
        """
        body = support.chat_completion("gpt-4o-mini-2024-07-18", 19, 10)
        self.upstream.default = support.Canned(chunks=[body[:20], body[20:]], chunk_delay=1.0)

        async def go() -> None:
            process, url = await self.start_gateway()
            load = Load(url, self.key, concurrency=20)
            load.running = False  # each client sends exactly one request
            await task.deferLater(reactor, 0.4, lambda: None)
            process.send_signal(signal.SIGTERM)
            await load.done
            await support.wait_for(lambda: process.poll() is not None, timeout=30)
            self.assertEqual(load.failed, [])
            self.assertEqual(len(load.completed), 20)
            code = await support.wait_for(lambda: process.poll() is not None, timeout=30)
            self.assertTrue(code)
            # twistd ends a clean SIGTERM shutdown by re-raising the signal
            # (systemd counts that as a clean stop).
            self.assertIn(process.returncode, (0, -signal.SIGTERM))
            self.assertEqual(row_ids(), set(load.completed))

        return support.as_deferred(go())


def _cluster() -> str:
    return sorted(os.listdir("/etc/postgresql"))[0]


class PostgresRestartTests(GatewayTestCase):
    """PostgreSQL restarted twice under load."""

    timeout = 180

    def test_restart_twice_under_load(self) -> defer.Deferred[None]:
        """
        Requests keep flowing while PostgreSQL restarts twice: no client sees
        an error, and every request has exactly one row (request_count exact).
        """

        async def restart() -> None:
            out, err, code = await utils.getProcessOutputAndValue(
                "pg_ctlcluster",
                ["--skip-systemctl-redirect", _cluster(), "main", "restart"],
                env=os.environ,
            )
            self.assertEqual(code, 0, err)

        async def go() -> None:
            load = Load(self.url, self.key, concurrency=8)
            await support.wait_for(lambda: len(load.completed) >= 50, timeout=30)
            await restart()
            await support.wait_for(lambda: len(load.completed) >= 300, timeout=60)
            await restart()
            await support.wait_for(lambda: len(load.completed) >= 600, timeout=60)
            await load.stop()
            self.assertEqual(load.failed, [])
            await support.wait_for(lambda: self.gateway.writer.queued == 0, timeout=60)
            await self.gateway.writer.flush()
            ids = support.run_sql("SELECT id::text FROM llm_requests")
            self.assertEqual(len(ids), len(load.completed))
            self.assertEqual({r[0] for r in ids}, set(load.completed))
            self.assertEqual(
                support.run_sql("SELECT request_count FROM api_keys"), [(len(load.completed),)]
            )

        return support.as_deferred(go())
