"""
Revocation reaches every running gateway: two real `twistd -n majordomo`
processes share one database, both serve a key from their caches, and
`majordomo keys revoke` turns both to 401 within a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from functools import partial
from typing import Any

import treq
from twisted.internet import defer, error, protocol, reactor, task, utils
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from majordomo.db.keycache import LISTENER_APPLICATION_NAME
from tests import support
from tests.test_tap import free_port

BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
).encode()


class _Gateway(protocol.ProcessProtocol):
    """One gateway process: its port and everything it printed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.output = b""
        self.ended: defer.Deferred[None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


def _started(gateway: _Gateway) -> bool:
    return b"Pricing data loaded" in gateway.output


class RevocationAcrossGatewaysTests(TestCase):
    """Two gateway processes, one fake provider, one database."""

    timeout = 90

    def setUp(self) -> defer.Deferred[None]:
        support.fresh_database()
        upstream = support.FakeProvider(
            support.Canned(chunks=[support.chat_completion("gpt-4o-mini-2024-07-18", 19, 10)])
        )
        upstream_port = support.listen(upstream)
        self.addCleanup(upstream_port.stopListening)
        self.env = support.test_env(
            MAJORDOMO_PROVIDERS_OPENAI_BASE_URL=f"http://127.0.0.1:{upstream_port.getHost().port}"
        )
        self.gateways = [self._spawn() for _ in range(2)]
        return support.as_deferred(self._wait_ready())

    def _spawn(self) -> _Gateway:
        spool = self.mktemp()
        os.makedirs(spool)
        gateway = _Gateway(free_port())
        env = {
            **self.env,
            "MAJORDOMO_SERVER_PORT": str(gateway.port),
            "MAJORDOMO_STORAGE_SPOOL_DIR": spool,
        }
        args = [support.TWISTD_BIN, "--nodaemon", "--pidfile=", "majordomo"]
        process = reactor.spawnProcess(gateway, args[0], args, env=env, path=None)

        def stop() -> defer.Deferred[None]:
            with contextlib.suppress(error.ProcessExitedAlready):
                process.signalProcess(signal.SIGTERM)
            return gateway.ended

        self.addCleanup(stop)
        return gateway

    async def _wait_ready(self) -> None:
        for gateway in self.gateways:
            await support.wait_for(partial(_started, gateway), timeout=30)

        def both_listening() -> bool:
            # The last statement of each listener is LISTEN, or the SELECT 1
            # probe, which only runs once LISTEN is in place.
            rows = support.run_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND datname = current_database() AND state = 'idle' "
                "AND (query ILIKE 'LISTEN%%' OR query = 'SELECT 1')",
                (LISTENER_APPLICATION_NAME,),
            )
            return bool(rows[0][0] == 2)

        await support.wait_for(both_listening, timeout=10)

    async def _majordomo(self, *args: str) -> str:
        out, err, code = await utils.getProcessOutputAndValue(
            support.MAJORDOMO_BIN, args, env=self.env
        )
        self.assertEqual(code, 0, (out + err).decode())
        return str(out.decode())

    async def _status(self, gateway: _Gateway, key: str) -> int:
        response = await treq.post(
            f"http://127.0.0.1:{gateway.port}/v1/chat/completions",
            BODY,
            headers=Headers(
                {
                    "Content-Type": ["application/json"],
                    "Authorization": ["Bearer sk-test-provider-key"],
                    "X-Majordomo-Key": [key],
                }
            ),
            persistent=False,
        )
        await treq.content(response)
        return int(response.code)

    def test_revoke_reaches_every_gateway(self) -> defer.Deferred[None]:
        """
        A key both gateways have cached keeps working after its row is made
        inactive without a NOTIFY (so each really answers from its cache);
        `majordomo keys revoke` then makes both answer 401 within 1 s of the
        command returning.
        """

        async def go() -> None:
            created = await self._majordomo("keys", "create", "--name", "revocation")
            key_id = re.search(r"ID:\s+(\S+)", created)
            key = re.search(r"Key:\s+(\S+)", created)
            assert key_id is not None and key is not None, created
            for gateway in self.gateways:
                self.assertEqual(await self._status(gateway, key.group(1)), 200)
            support.run_sql(
                "UPDATE api_keys SET is_active = false WHERE id = %s", (key_id.group(1),)
            )
            for gateway in self.gateways:
                self.assertEqual(
                    await self._status(gateway, key.group(1)), 200, "not served from the cache"
                )

            revoked = await self._majordomo("keys", "revoke", key_id.group(1))
            self.assertIn("revoked", revoked)
            returned = reactor.seconds()
            waiting = list(self.gateways)
            while waiting:
                for gateway in list(waiting):
                    if await self._status(gateway, key.group(1)) == 401:
                        waiting.remove(gateway)
                elapsed = reactor.seconds() - returned
                self.assertLess(elapsed, 1.0, f"{len(waiting)} gateway(s) still accept the key")
                if waiting:
                    await task.deferLater(reactor, 0.05, lambda: None)

        return support.as_deferred(go())
