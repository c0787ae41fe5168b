"""
Revocation reaches every running gateway: two real `twistd -n majordomo`
processes share one database, both serve a key from their caches, and
`majordomo keys revoke` turns both to 401 within a second.
"""

from __future__ import annotations

import json
import re

import treq
from twisted.internet import defer, reactor, task, utils
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from tests import support
from tests.gateway_processes import GatewayProcess, spawn_gateway, wait_ready

BODY = json.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
).encode()


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
        self.gateways = [spawn_gateway(self, self.env) for _ in range(2)]
        return support.as_deferred(wait_ready(self.gateways))

    async def _majordomo(self, *args: str) -> str:
        out, err, code = await utils.getProcessOutputAndValue(
            support.MAJORDOMO_BIN, args, env=self.env
        )
        self.assertEqual(code, 0, (out + err).decode())
        return str(out.decode())

    async def _status(self, gateway: GatewayProcess, key: str) -> int:
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
