"""
Proxy keys on the request path (issue 15): a real gateway with an encryption
key, proxy keys and their provider keys made with the real
L{ProxyKeyStore}, and the fake provider on loopback recording what it is
sent.  The real provider key goes upstream where the client put its proxy
key, the proxy key never does; every refusal is a 401 in the provider's
format with a row; a revocation or a mapping change applies within a second.
"""

from __future__ import annotations

import contextlib
import json
import signal
from typing import Any

from twisted.internet import defer, error, protocol, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from majordomo.db import Database
from majordomo.db.keys import KeyStore, hash_key
from majordomo.proxykeys.cache import ProxyKeyCache
from majordomo.proxykeys.store import ActiveProxyKey, ProxyKeyStore, generate_proxy_key
from majordomo.vault import SecretBox
from tests import support
from tests.gateway_case import GatewayTestCase
from tests.test_tap import free_port

ENCRYPTION_KEY = "5f" * 32
CHAT = "/v1/chat/completions"
CHAT_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
MESSAGES = "/v1/messages"
MESSAGES_BODY = {"model": "claude-sonnet-4-20250514", "max_tokens": 16, "messages": []}
GEMINI = "/v1beta/models/gemini-2.5-flash:generateContent"
AZURE = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
REAL_KEYS = {
    "openai": "sk-real-openai-MARKER-1",
    "anthropic": "sk-ant-real-MARKER-2",
    "gemini": "AIza-real-gemini-MARKER-3",
    "azure": "azure-real-MARKER-4",
}


def sha256(text: str) -> str:
    return hash_key(text)


class ProxyKeyGatewayCase(GatewayTestCase):
    """A gateway with proxy keys enabled, and a proxy key of the test's key with every provider."""

    gateway_env = {"MAJORDOMO_SECRETS_ENCRYPTION_KEY": ENCRYPTION_KEY}

    async def _start(self) -> None:
        await super()._start()
        self.store = ProxyKeyStore(self.gateway.db, SecretBox.from_hex(ENCRYPTION_KEY))
        created, self.proxy_key = await self.store.create(self.key_id, "customer-a")
        self.proxy_key_id = created.id
        for provider, secret in REAL_KEYS.items():
            await self.store.set_provider(created.id, provider, secret)
        # The gateway hears NOTIFYs (and so caches) once its listener is up.
        await support.wait_for(lambda: self.gateway.key_cache.trusted)

    def assert_never_upstream(self, *secrets: str) -> None:
        """Nothing the fake provider received holds any of C{secrets}."""
        seen = json.dumps([{**r, "body": r["body"].decode()} for r in self.upstream.received])
        for secret in secrets:
            self.assertNotIn(secret, seen)

    async def refused(
        self, path: str, body: Any, status: int = 401, **headers: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A request refused with C{status}, not forwarded: (its error body, its row)."""
        response, content = await self.post(path, body, X_Majordomo_Key=self.key, **headers)
        self.assertEqual(response.code, status, content)
        self.assertEqual(self.upstream.received, [])
        (row,) = await self.rows()
        self.assertEqual(row["status_code"], status)
        self.assertEqual(response.headers.getRawHeaders("x-majordomo-request-id"), [row["id"]])
        self.assertNotIn(self.proxy_key, json.dumps(row))
        error: dict[str, Any] = json.loads(content)
        return error, row


class SwapTests(ProxyKeyGatewayCase):
    """The real provider key replaces the proxy key in every place an SDK puts a key."""

    async def forwarded(self, path: str, body: Any, **headers: str) -> dict[str, Any]:
        response, content = await self.post(path, body, X_Majordomo_Key=self.key, **headers)
        self.assertEqual(response.code, 200, content)
        (sent,) = self.upstream.received
        self.assert_never_upstream(self.proxy_key, "mdm_pk_")
        received: dict[str, Any] = sent
        return received

    def test_every_place(self) -> defer.Deferred[None]:
        """
        Bearer (OpenAI), x-api-key (Anthropic), api-key (Azure),
        x-goog-api-key and ?key= (Gemini): the provider sees its real key
        exactly where the proxy key was; each row has the proxy key's id and
        the real key's hash; the proxy key's counters count the rows.
        """

        async def go() -> None:
            pk = self.proxy_key
            sent = await self.forwarded(CHAT, CHAT_BODY, Authorization=f"Bearer {pk}")
            self.assertEqual(sent["headers"]["authorization"], [f"Bearer {REAL_KEYS['openai']}"])
            self.upstream.received.clear()
            sent = await self.forwarded(MESSAGES, MESSAGES_BODY, X_Api_Key=pk)
            self.assertEqual(sent["headers"]["x-api-key"], [REAL_KEYS["anthropic"]])
            self.upstream.received.clear()
            sent = await self.forwarded(AZURE, CHAT_BODY, Api_Key=pk)
            self.assertEqual(sent["headers"]["api-key"], [REAL_KEYS["azure"]])
            self.assertEqual(sent["uri"], AZURE)
            self.upstream.received.clear()
            sent = await self.forwarded(GEMINI, {}, X_Goog_Api_Key=pk)
            self.assertEqual(sent["headers"]["x-goog-api-key"], [REAL_KEYS["gemini"]])
            self.upstream.received.clear()
            sent = await self.forwarded(f"{GEMINI}?alt=sse&key={pk}", {})
            self.assertEqual(sent["uri"], f"{GEMINI}?alt=sse&key={REAL_KEYS['gemini']}")
            self.assertNotIn("x-goog-api-key", sent["headers"])

            rows = await self.rows(5)
            self.assertEqual(
                [(r["provider"], r["provider_api_key_hash"]) for r in rows],
                [(p, sha256(REAL_KEYS[p])) for p in ("openai", "anthropic", "azure")]
                + [("gemini", sha256(REAL_KEYS["gemini"]))] * 2,
            )
            self.assertEqual({r["proxy_key_id"] for r in rows}, {self.proxy_key_id})
            self.assertEqual({r["majordomo_api_key_id"] for r in rows}, {self.key_id})
            self.assertNotIn(pk, json.dumps(rows))
            self.assertNotIn("MARKER", json.dumps(rows))
            ((count, used),) = support.run_sql(
                "SELECT request_count, last_used_at IS NOT NULL FROM proxy_keys WHERE id = %s",
                (self.proxy_key_id,),
            )
            self.assertEqual((count, used), (5, True))
            # The SQL the issue promises: rows JOIN proxy_keys.
            joined = support.run_sql(
                "SELECT p.name, count(*) FROM llm_requests r "
                "JOIN proxy_keys p ON p.id = r.proxy_key_id GROUP BY p.name"
            )
            self.assertEqual(joined, [("customer-a", 5)])

        return support.as_deferred(go())

    def test_plain_requests_unchanged(self) -> defer.Deferred[None]:
        """A request with a provider key of its own goes as before: no proxy key id on its row."""

        async def go() -> None:
            sent = await self.forwarded(CHAT, CHAT_BODY, Authorization="Bearer sk-own")
            self.assertEqual(sent["headers"]["authorization"], ["Bearer sk-own"])
            (row,) = await self.rows()
            self.assertIsNone(row["proxy_key_id"])
            self.assertEqual(row["provider_api_key_hash"], sha256("sk-own"))

        return support.as_deferred(go())


class RefusalTests(ProxyKeyGatewayCase):
    """401 in the provider's format, with a row, and nothing forwarded."""

    def test_unknown_proxy_key(self) -> defer.Deferred[None]:
        async def go() -> None:
            error, row = await self.refused(MESSAGES, MESSAGES_BODY, X_Api_Key=generate_proxy_key())
            self.assertEqual(error["type"], "error")  # Anthropic's format
            self.assertEqual(error["error"]["message"], "Invalid or revoked proxy key")
            self.assertEqual(row["error_message"], "Invalid or revoked proxy key")
            self.assertIsNone(row["proxy_key_id"])

        return support.as_deferred(go())

    def test_revoked_proxy_key(self) -> defer.Deferred[None]:
        async def go() -> None:
            await self.store.revoke(self.proxy_key_id)
            error, _ = await self.refused(GEMINI, {}, X_Goog_Api_Key=self.proxy_key)
            self.assertEqual(error["error"]["status"], "UNAUTHENTICATED")  # Gemini's format
            self.assertEqual(error["error"]["message"], "Invalid or revoked proxy key")

        return support.as_deferred(go())

    def test_foreign_proxy_key(self) -> defer.Deferred[None]:
        """Another Majordomo key's proxy key is refused, and its id is not on the row."""

        async def go() -> None:
            other, _ = await KeyStore(self.gateway.db).create("Other")
            foreign, foreign_key = await self.store.create(other.id, "someone-else")
            await self.store.set_provider(foreign.id, "openai", "sk-foreign-MARKER")
            error, row = await self.refused(CHAT, CHAT_BODY, Authorization=f"Bearer {foreign_key}")
            self.assertEqual(error["error"]["message"], "Invalid or revoked proxy key")
            self.assertEqual(error["error"]["type"], "invalid_request_error")  # OpenAI's
            self.assertEqual(row["majordomo_api_key_id"], self.key_id)
            self.assertIsNone(row["proxy_key_id"])
            self.assert_never_upstream(foreign_key, "sk-foreign-MARKER")

        return support.as_deferred(go())

    def test_no_mapping_for_the_provider(self) -> defer.Deferred[None]:
        async def go() -> None:
            await self.store.remove_provider(self.proxy_key_id, "anthropic")
            error, row = await self.refused(MESSAGES, MESSAGES_BODY, X_Api_Key=self.proxy_key)
            self.assertEqual(error["error"]["message"], "Proxy key has no anthropic key")
            self.assertEqual(row["proxy_key_id"], self.proxy_key_id)
            self.assertEqual(row["model_requested"], "claude-sonnet-4-20250514")

        return support.as_deferred(go())

    def test_two_proxy_keys(self) -> defer.Deferred[None]:
        """Two different proxy keys in one request: which counts would be a guess."""

        async def go() -> None:
            other = generate_proxy_key()
            error, _ = await self.refused(
                f"{GEMINI}?key={other}", {}, X_Goog_Api_Key=self.proxy_key
            )
            self.assertEqual(error["error"]["message"], "A request may carry only one proxy key")

        return support.as_deferred(go())

    def test_proxy_key_that_would_stay_in_the_target(self) -> defer.Deferred[None]:
        """A percent-encoded ?key= (or one in the path) is refused, never forwarded half-swapped."""

        async def go() -> None:
            encoded = self.proxy_key.replace("mdm_pk_", "mdm%5Fpk_")
            await self.refused(f"{GEMINI}?key={encoded}", {})
            self.assertEqual(self.upstream.received, [])

        return support.as_deferred(go())


class PropagationTests(ProxyKeyGatewayCase):
    """A revocation or a mapping change applies within a second (NOTIFY), cached or not."""

    async def until(self, ok: Any, **headers: str) -> float:
        """Seconds until a chat request's outcome satisfies C{ok}(code, sent key)."""
        started = reactor.seconds()
        while True:
            self.upstream.received.clear()
            response, _ = await self.post(CHAT, CHAT_BODY, X_Majordomo_Key=self.key, **headers)
            received = self.upstream.received
            sent = received[0]["headers"]["authorization"][0] if received else None
            if ok(response.code, sent):
                return float(reactor.seconds() - started)
            self.assertLess(reactor.seconds() - started, 1.0)
            await support.sleep(0.02)

    def test_mapping_change_then_revoke(self) -> defer.Deferred[None]:
        async def go() -> None:
            bearer = {"Authorization": f"Bearer {self.proxy_key}"}
            real = f"Bearer {REAL_KEYS['openai']}"
            await self.until(lambda code, sent: code == 200 and sent == real, **bearer)
            self.assertEqual(self.gateway.proxy_key_cache.size, 1)  # type: ignore[union-attr]
            await self.store.set_provider(self.proxy_key_id, "openai", "sk-rotated-MARKER")
            await self.until(
                lambda code, sent: code == 200 and sent == "Bearer sk-rotated-MARKER", **bearer
            )
            await self.store.remove_provider(self.proxy_key_id, "openai")
            await self.until(lambda code, sent: code == 401 and sent is None, **bearer)
            await self.store.set_provider(self.proxy_key_id, "openai", "sk-back-MARKER")
            await self.until(lambda code, sent: code == 200, **bearer)
            await self.store.revoke(self.proxy_key_id)
            await self.until(lambda code, sent: code == 401 and sent is None, **bearer)
            self.assertEqual(self.gateway.proxy_key_cache.size, 0)  # type: ignore[union-attr]

        return support.as_deferred(go())

    def test_majordomo_key_revoked(self) -> defer.Deferred[None]:
        """Revoking the Majordomo key drops its proxy keys from the cache too."""

        async def go() -> None:
            bearer = {"Authorization": f"Bearer {self.proxy_key}"}
            await self.until(lambda code, sent: code == 200, **bearer)
            await KeyStore(self.gateway.db).revoke(self.key_id)
            await self.until(lambda code, sent: code == 401, **bearer)
            self.assertEqual(self.gateway.proxy_key_cache.size, 0)  # type: ignore[union-attr]

        return support.as_deferred(go())


class DisabledTests(GatewayTestCase):
    """Without secrets.encryption_key, a proxy key is refused and never forwarded."""

    def test_refused_without_an_encryption_key(self) -> defer.Deferred[None]:
        async def go() -> None:
            proxy_key = generate_proxy_key()
            for path, headers in [
                (CHAT, {"Authorization": f"Bearer {proxy_key}"}),
                (MESSAGES, {"X_Api_Key": proxy_key}),
                (f"{GEMINI}?key={proxy_key}", {}),
                (AZURE, {"Api_Key": proxy_key}),
            ]:
                response, content = await self.post(path, {}, X_Majordomo_Key=self.key, **headers)
                self.assertEqual(response.code, 401, content)
                self.assertIn(b"Proxy keys are not enabled on this gateway", content)
            self.assertEqual(self.upstream.received, [])
            rows = await self.rows(4)
            self.assertEqual([r["status_code"] for r in rows], [401] * 4)
            self.assertNotIn(proxy_key, json.dumps(rows))

        return support.as_deferred(go())


class _Listener:
    """The key cache as the proxy key cache sees it."""

    def __init__(self) -> None:
        self.trusted = True
        self.observers: list[Any] = []

    def observe(self, observer: Any) -> None:
        self.observers.append(observer)

    def notify(self, key_id: str | None) -> None:
        for observer in self.observers:
            observer(key_id)


class _Store:
    """A proxy key store in memory that counts its lookups and can hold one back."""

    def __init__(self) -> None:
        self.keys: dict[str, ActiveProxyKey] = {}
        self.lookups = 0
        self.held: defer.Deferred[None] | None = None

    async def find_active(self, key_hash: str) -> ActiveProxyKey | None:
        self.lookups += 1
        if self.held is not None:
            await self.held
        return self.keys.get(key_hash)


class ProxyKeyCacheTests(SynchronousTestCase):
    """The cache's rules, on a store in memory."""

    def setUp(self) -> None:
        self.listener = _Listener()
        self.store = _Store()
        self.cache = ProxyKeyCache(self.store, self.listener, max_entries=2)
        for n in range(3):
            self.store.keys[f"h{n}"] = ActiveProxyKey(f"pk{n}", "api", {"openai": f"sk{n}"})

    def find(self, key_hash: str) -> ActiveProxyKey | None:
        found: ActiveProxyKey | None = self.successResultOf(self.cache.find(key_hash))
        return found

    def test_hits_cached_misses_not(self) -> None:
        self.assertEqual(self.find("h0"), self.store.keys["h0"])
        self.assertEqual(self.find("h0"), self.store.keys["h0"])
        self.assertIsNone(self.find("nope"))
        self.assertIsNone(self.find("nope"))
        self.assertEqual(self.store.lookups, 3)

    def test_not_trusted(self) -> None:
        """While the listener is not listening nothing is cached, nor read from the cache."""
        self.find("h0")
        self.listener.trusted = False
        self.find("h0")
        self.find("h1")
        self.listener.trusted = True
        self.find("h1")
        self.assertEqual((self.store.lookups, self.cache.size), (4, 2))

    def test_notify_drops_by_proxy_key_or_majordomo_key(self) -> None:
        self.find("h0")
        self.find("h1")
        self.listener.notify("pk0")
        self.assertEqual(self.cache.size, 1)
        self.listener.notify("api")
        self.assertEqual(self.cache.size, 0)
        self.find("h2")
        self.listener.notify(None)
        self.assertEqual(self.cache.size, 0)

    def test_lookup_racing_a_notify_is_not_cached(self) -> None:
        self.store.held = defer.Deferred()
        d = self.cache.find("h0")
        self.listener.notify("pk0")
        self.store.held.callback(None)
        self.store.held = None
        self.assertEqual(self.successResultOf(d), self.store.keys["h0"])
        self.assertEqual(self.cache.size, 0)

    def test_least_recently_used_out(self) -> None:
        self.find("h0")
        self.find("h1")
        self.find("h0")
        self.find("h2")  # h1 goes
        lookups = self.store.lookups
        self.find("h0")
        self.find("h2")
        self.assertEqual(self.store.lookups, lookups)
        self.find("h1")
        self.assertEqual(self.store.lookups, lookups + 1)
        self.listener.notify("pk1")
        self.assertEqual(self.cache.size, 1)


class _Exited(protocol.ProcessProtocol):
    """A gateway process: everything it printed, and its exit status."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


class StartupTests(TestCase):
    """A real twistd gateway checks the stored provider keys against its encryption key."""

    def spawn(self, encryption_key: str) -> _Exited:
        gateway = _Exited()
        env = support.test_env(
            MAJORDOMO_SERVER_PORT=str(free_port()),
            MAJORDOMO_SECRETS_ENCRYPTION_KEY=encryption_key,
        )
        args = [support.TWISTD_BIN, "--nodaemon", "--pidfile=", "majordomo"]
        process = reactor.spawnProcess(gateway, args[0], args, env=env, path=None)

        def stop() -> defer.Deferred[int]:
            with contextlib.suppress(error.ProcessExitedAlready):
                process.signalProcess(signal.SIGTERM)
            return gateway.ended

        self.addCleanup(stop)
        return gateway

    def test_wrong_key_is_one_error_and_exit_1(self) -> defer.Deferred[None]:
        async def go() -> None:
            support.fresh_database()
            db = Database(support.pg_config())
            await db.start()
            self.addCleanup(db.close)
            key, _ = await KeyStore(db).create("Development")
            store = ProxyKeyStore(db, SecretBox.from_hex("a1" * 32))
            created, _ = await store.create(key.id, "customer")
            await store.set_provider(created.id, "openai", "sk-sealed-MARKER")

            right = self.spawn("a1" * 32)
            await support.wait_for(lambda: b"Proxy keys enabled" in right.output, timeout=30)
            lines = right.output.decode().splitlines()
            pricing = next(i for i, line in enumerate(lines) if "Pricing data loaded" in line)
            enabled = next(i for i, line in enumerate(lines) if "Proxy keys enabled" in line)
            self.assertLess(pricing, enabled)

            wrong = self.spawn("b2" * 32)
            status = await wrong.ended
            output = wrong.output.decode()
            self.assertEqual(status, 1, output)
            cannot = [line for line in output.splitlines() if "Cannot start" in line]
            self.assertEqual(len(cannot), 1, output)
            self.assertIn("sealed with another encryption key", cannot[0])
            self.assertIn("secrets.encryption_key", cannot[0])
            self.assertNotIn("Proxy keys enabled", output)
            for secret in ("sk-sealed-MARKER", "a1" * 32, "b2" * 32):
                self.assertNotIn(secret, output + right.output.decode())

        return support.as_deferred(go())
