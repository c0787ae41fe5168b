"""
Rotating the encryption key while gateways serve proxy keys (issue 15): two
real C{twistd -n majordomo} processes configured with the new key and the
old one as a previous key, provider keys stored sealed under the old one,
clients sending proxy-key requests to both without pause, and the real
C{majordomo secrets rotate} run in the middle of that traffic.  No request
may fail; afterwards every stored provider key is sealed under the new key
with none of its old bytes left, a gateway given only the old key refuses
to start in one line, and one given only the new key serves the proxy key.

C{secrets rotate} re-seals under the key read on its stdin and refuses one
it is configured with already, so it runs with the old key configured (the
configuration the stored rows were made under) and the new key piped in.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import treq
from twisted.internet import defer, reactor, threads
from twisted.python import log
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from majordomo.db import Database
from majordomo.db.keys import KeyStore, hash_key
from majordomo.proxykeys.store import ProxyKeyStore
from majordomo.vault import SecretBox, VaultError, provider_key_aad
from tests import support
from tests.gateway_processes import GatewayProcess, spawn_gateway, wait_ready
from tests.test_proxykeys_cli import majordomo_fed, sealed_rows
from tests.test_tap import free_port

OLD_KEY = "0d" * 32
NEW_KEY = "e7" * 32
OLD, NEW = SecretBox.from_hex(OLD_KEY), SecretBox.from_hex(NEW_KEY)
REAL_KEYS = {
    "openai": "sk-proj-ROTATION-MARKER-openai",
    "anthropic": "sk-ant-ROTATION-MARKER-anthropic",
    "gemini": "AIza-ROTATION-MARKER-gemini",
}
CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
MESSAGES_BODY = {"model": "claude-sonnet-4-20250514", "max_tokens": 16, "messages": []}
GEMINI = "/v1beta/models/gemini-2.5-flash:generateContent"
CLIENTS_PER_GATEWAY = 2


def request_for(turn: int, proxy_key: str) -> tuple[str, dict[str, Any], dict[str, str], str]:
    """The C{turn}th request of a client, by turns each provider and credential place:
    (path, body, headers, the real key the provider must then receive)."""
    provider = ("openai", "anthropic", "gemini")[turn % 3]
    if provider == "openai":
        return "/v1/chat/completions", CHAT_BODY, {"Authorization": f"Bearer {proxy_key}"}, provider
    if provider == "anthropic":
        return "/v1/messages", MESSAGES_BODY, {"x-api-key": proxy_key}, provider
    if turn % 2:
        return f"{GEMINI}?key={proxy_key}", {}, {}, provider
    return GEMINI, {}, {"x-goog-api-key": proxy_key}, provider


def real_credential(received: dict[str, Any]) -> tuple[str, str, str]:
    """(provider, where, what) of the credential a request reached the fake provider with."""
    headers, uri = received["headers"], received["uri"]
    if uri.startswith("/v1/chat/completions"):
        return "openai", "authorization", headers["authorization"][0]
    if uri.startswith("/v1/messages"):
        return "anthropic", "x-api-key", headers["x-api-key"][0]
    if "?key=" in uri:
        return "gemini", "?key=", uri.split("?key=", 1)[1]
    return "gemini", "x-goog-api-key", headers["x-goog-api-key"][0]


class RotationAcrossGatewaysTests(TestCase):
    """Two gateway processes, one fake provider, one database, one rotation."""

    timeout = 90

    def setUp(self) -> defer.Deferred[None]:
        return support.as_deferred(self._start())

    async def _start(self) -> None:
        support.fresh_database()
        self.upstream = support.FakeProvider(
            support.Canned(chunks=[support.chat_completion("gpt-4o-mini-2024-07-18", 19, 10)])
        )
        upstream_port = support.listen(self.upstream)
        self.addCleanup(upstream_port.stopListening)
        base = f"http://127.0.0.1:{upstream_port.getHost().port}"
        self.providers_env = {
            f"MAJORDOMO_PROVIDERS_{name}_BASE_URL": base
            for name in ("OPENAI", "ANTHROPIC", "GEMINI", "AZURE")
        }
        db = Database(support.pg_config(), reactor=reactor, pool_size=1)
        await db.start()
        self.addCleanup(db.close)
        api_key, self.key = await KeyStore(db).create("Rotation")
        store = ProxyKeyStore(db, OLD)
        created, self.proxy_key = await store.create(api_key.id, "customer-a")
        self.proxy_key_id = created.id
        for provider, secret in REAL_KEYS.items():
            await store.set_provider(created.id, provider, secret)

    def secrets_env(self, key: str, previous: str = "") -> dict[str, str]:
        return {
            "MAJORDOMO_SECRETS_ENCRYPTION_KEY": key,
            "MAJORDOMO_SECRETS_PREVIOUS_ENCRYPTION_KEYS": previous,
        }

    def gateway_env(self, key: str, previous: str = "") -> dict[str, str]:
        return support.test_env(**self.secrets_env(key, previous), **self.providers_env)

    async def send(self, gateway: GatewayProcess, turn: int) -> tuple[int, str, bytes]:
        """One proxy-key request to C{gateway}: (status, provider, body)."""
        path, body, headers, provider = request_for(turn, self.proxy_key)
        response = await treq.post(
            gateway.url + path,
            json.dumps(body).encode(),
            headers=Headers(
                {
                    "Content-Type": ["application/json"],
                    "X-Majordomo-Key": [self.key],
                    **{name: [value] for name, value in headers.items()},
                }
            ),
            persistent=False,
        )
        content = await treq.content(response)
        return int(response.code), provider, content

    async def client(
        self, gateway: GatewayProcess, first_turn: int, done: list[bool], traffic: list[Any]
    ) -> None:
        """Requests to C{gateway} one after another until C{done}; each outcome in C{traffic}."""
        turn = first_turn
        while not done:
            status, provider, content = await self.send(gateway, turn)
            traffic.append((reactor.seconds(), gateway.port, provider, status, content))
            turn += 1

    def test_rotate_mid_traffic(self) -> defer.Deferred[None]:
        """
        Clients on both gateways the whole time; `secrets rotate` (the old key
        configured, the new one on stdin) in the middle: every request is a
        200 with the real provider key upstream and its row, before, during
        and after; the stored rows end sealed under the new key only.
        """

        async def go() -> None:
            before = sealed_rows()
            self.assertEqual({row[3] for row in before}, {OLD.fingerprint})
            # With the gateways' own configuration the new key is a configured one
            # already, which rotate refuses, changing nothing.
            out, err, code = await majordomo_fed(
                NEW_KEY + "\n", "secrets", "rotate", **self.secrets_env(NEW_KEY, OLD_KEY)
            )
            self.assertEqual((out, code), ("", 1))
            self.assertEqual(err.count("\n"), 1, err)
            self.assertIn("configured already", err)
            self.assertEqual(sealed_rows(), before)

            gateways = [spawn_gateway(self, self.gateway_env(NEW_KEY, OLD_KEY)) for _ in range(2)]
            await wait_ready(gateways)
            for gateway in gateways:
                await support.wait_for(lambda g=gateway: b"Proxy keys enabled" in g.output, 10)

            done: list[bool] = []
            traffic: list[Any] = []
            clients = [
                defer.Deferred.fromCoroutine(self.client(gateway, n, done, traffic))
                for gateway in gateways
                for n in range(CLIENTS_PER_GATEWAY)
            ]
            # Every gateway has served (and cached) the proxy key before the rotation.
            await support.wait_for(
                lambda: {entry[1] for entry in traffic} == {g.port for g in gateways}
            )
            await support.sleep(0.5)

            rotate_started = reactor.seconds()
            out, err, code = await majordomo_fed(
                NEW_KEY + "\n",
                "secrets",
                "rotate",
                **self.secrets_env(OLD_KEY),
            )
            rotated = reactor.seconds()
            self.assertEqual((err, code), ("", 0), out)
            self.assertIn(
                f"Re-encrypted 3 stored provider keys under encryption key {NEW.fingerprint}.", out
            )
            self.assertNotIn(NEW_KEY, out)
            # Traffic goes on after the NOTIFYs have dropped the cached keys.
            await support.sleep(1.0)
            done.append(True)
            await defer.gatherResults(clients, consumeErrors=True)

            failed = [entry for entry in traffic if entry[3] != 200]
            self.assertFalse(
                failed, f"{len(failed)} of {len(traffic)} requests failed, first: {failed[:2]}"
            )
            for gateway in gateways:
                served = [entry[0] for entry in traffic if entry[1] == gateway.port]
                self.assertTrue([t for t in served if t < rotate_started], gateway.port)
                during = [t for t in served if rotate_started <= t <= rotated + 0.2]
                self.assertTrue(during, gateway.port)
                self.assertGreater(len([t for t in served if t > rotated + 0.5]), 3)

            # The provider always received the real key where the proxy key was, never the latter.
            self.assertEqual(len(self.upstream.received), len(traffic))
            self.assertNotIn("mdm_pk_", json.dumps(self.upstream.received, default=repr))
            self.assertEqual(
                {real_credential(received) for received in self.upstream.received},
                {
                    ("openai", "authorization", f"Bearer {REAL_KEYS['openai']}"),
                    ("anthropic", "x-api-key", REAL_KEYS["anthropic"]),
                    ("gemini", "x-goog-api-key", REAL_KEYS["gemini"]),
                    ("gemini", "?key=", REAL_KEYS["gemini"]),
                },
            )

            # Every request has its row, with the proxy key and the real key's hash.
            def all_rows() -> list[tuple[Any, ...]]:
                rows = support.run_sql(
                    "SELECT status_code, proxy_key_id::text, provider, provider_api_key_hash "
                    "FROM llm_requests"
                )
                return rows if len(rows) >= len(traffic) else []

            rows = await support.wait_for(all_rows, timeout=10)
            self.assertEqual(len(rows), len(traffic))
            self.assertEqual(
                {(status, pk, provider, key_hash) for status, pk, provider, key_hash in rows},
                {(200, self.proxy_key_id, p, hash_key(k)) for p, k in REAL_KEYS.items()},
            )

            after = sealed_rows()
            self.assertEqual({row[3] for row in after}, {NEW.fingerprint})
            self.assertEqual([row[:2] for row in after], [row[:2] for row in before])
            self.assertFalse({row[2] for row in before} & {row[2] for row in after})
            for pk, provider, secret, _ in after:
                aad = provider_key_aad(pk, provider)
                self.assertEqual(NEW.open(secret, aad), REAL_KEYS[provider])
                with self.assertRaises(VaultError):
                    OLD.open(secret, aad)

            await self.assert_only_old_cannot_start()
            await self.assert_only_new_serves()
            log.msg(
                f"rotation mid-traffic: {len(traffic)} requests on 2 gateways, 0 failed; "
                f"secrets rotate took {rotated - rotate_started:.2f} s"
            )

        return support.as_deferred(go())

    async def assert_only_old_cannot_start(self) -> None:
        """A gateway given only the old key: one Cannot start line, exit 1, no secret shown."""
        env = self.gateway_env(OLD_KEY)
        env["MAJORDOMO_SERVER_PORT"] = str(free_port())
        args = [support.TWISTD_BIN, "--nodaemon", "--pidfile=", "majordomo"]
        ended = await threads.deferToThread(
            subprocess.run, args, env=env, capture_output=True, text=True, timeout=30
        )
        output = ended.stdout + ended.stderr
        self.assertEqual(ended.returncode, 1, output)
        cannot = [line for line in output.splitlines() if "Cannot start" in line]
        self.assertEqual(len(cannot), 1, output)
        self.assertIn("sealed with another encryption key", cannot[0])
        self.assertIn("secrets.encryption_key", cannot[0])
        self.assertNotIn("Proxy keys enabled", output)
        self.assertNotIn("Traceback", output)
        for secret in (OLD_KEY, NEW_KEY, "mdm_pk_", *REAL_KEYS.values()):
            self.assertNotIn(secret, output)

    async def assert_only_new_serves(self) -> None:
        """A gateway given only the new key starts and swaps in the real provider key."""
        gateway = spawn_gateway(self, self.gateway_env(NEW_KEY))
        await support.wait_for(lambda: b"Proxy keys enabled" in gateway.output, timeout=30)
        self.upstream.received.clear()
        for turn in range(3):
            status, provider, content = await self.send(gateway, turn)
            self.assertEqual(status, 200, content)
        self.assertEqual(
            [
                r["headers"].get("authorization", r["headers"].get("x-api-key"))
                for r in self.upstream.received
            ],
            [[f"Bearer {REAL_KEYS['openai']}"], [REAL_KEYS["anthropic"]], None],
        )
        self.assertEqual(
            self.upstream.received[2]["headers"]["x-goog-api-key"], [REAL_KEYS["gemini"]]
        )
