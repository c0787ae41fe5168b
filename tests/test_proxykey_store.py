"""
The proxy key store (majordomo/proxykeys/store.py) against a real PostgreSQL:
CRUD and the NOTIFY each change sends, find_active (what the gateway swaps
with), the startup check of the encryption key, and rotation in one transaction.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase
from txpostgres import txpostgres

from majordomo.db import Database
from majordomo.db.keys import KEYS_CHANNEL, KeyNotFound, KeyStore, hash_key
from majordomo.proxykeys.store import (
    PROXY_KEY_PREFIX,
    ProviderError,
    ProxyKeyNotFound,
    ProxyKeyStore,
    generate_proxy_key,
    rotate,
)
from majordomo.vault import SecretBox, VaultError
from tests import support

KEY_A = "a1" * 32
KEY_B = "b2" * 32
KEY_C = "c3" * 32
OPENAI = "sk-proj-MARKER-openai-0123456789abcdef"
ANTHROPIC = "sk-ant-MARKER-anthropic-0123456789"
GEMINI = "AIzaMARKER-gemini-0123456789"


class GenerationTests(SynchronousTestCase):
    def test_generated_proxy_key_format(self) -> None:
        """C{mdm_pk_} and at least 40 URL-safe characters (256 bits); never twice the same."""
        keys = [generate_proxy_key() for _ in range(200)]
        self.assertEqual(PROXY_KEY_PREFIX, "mdm_pk_")
        for key in keys:
            self.assertRegex(key, r"^mdm_pk_[A-Za-z0-9_-]{40,}$")
        self.assertEqual(len(set(keys)), len(keys))


class ProxyKeyStoreTests(TestCase):
    """ProxyKeyStore on the test database, with a Majordomo key to hang proxy keys on."""

    def setUp(self) -> defer.Deferred[None]:
        support.fresh_database()
        self.db = Database(support.pg_config(), reactor=reactor, pool_size=1)
        self.addCleanup(self.db.close)
        self.box_a, self.box_b = SecretBox.from_hex(KEY_A), SecretBox.from_hex(KEY_B)
        self.store = ProxyKeyStore(self.db, self.box_a)

        async def start() -> None:
            await self.db.start()
            key, _ = await KeyStore(self.db).create("Product")
            self.api_key_id = str(key.id)

        return support.as_deferred(start())

    async def listen(self) -> list[Any]:
        """LISTEN on the keys channel on a connection of our own; the notifies seen."""
        connection = txpostgres.Connection(reactor=reactor)
        await connection.connect(**support.pg_config().dsn_parameters())
        self.addCleanup(connection.close)
        notifies: list[Any] = []
        connection.addNotifyObserver(notifies.append)
        await connection.runOperation(f"LISTEN {KEYS_CHANNEL}")
        return notifies

    async def payloads(self, notifies: list[Any], count: int) -> list[str]:
        """The payloads of the first C{count} notifies, once they arrived."""
        await support.wait_for(lambda: len(notifies) >= count, timeout=5)
        self.assertEqual({n.channel for n in notifies}, {KEYS_CHANNEL})
        return [n.payload for n in notifies]

    def stored(self) -> dict[tuple[str, str], tuple[bytes, str]]:
        """(proxy key id, provider) -> (sealed bytes, fingerprint), as stored."""
        rows = support.run_sql(
            "SELECT proxy_key_id::text, provider, secret, key_fingerprint FROM proxy_key_providers"
        )
        return {(k, p): (bytes(s), f) for k, p, s, f in rows}

    def assertNoPlaintextAtRest(self, *secrets: str) -> None:
        """No table holds any of C{secrets} (or a proxy key plaintext), as text or bytes."""
        for table in ("proxy_keys", "proxy_key_providers", "api_keys", "llm_requests"):
            dump = str(support.run_sql(f"SELECT t::text FROM {table} t"))
            for secret in secrets:
                self.assertNotIn(secret, dump)
        for sealed, _ in self.stored().values():
            for secret in secrets:
                self.assertNotIn(secret.encode(), sealed)

    def test_create_get_list(self) -> defer.Deferred[None]:
        """
        create() returns the row and the plaintext once; only its SHA-256 is
        stored.  get() and list() (all, or one Majordomo key's) read it back;
        unknown or malformed ids are KeyNotFound / ProxyKeyNotFound.
        """

        async def go() -> None:
            key, plaintext = await self.store.create(self.api_key_id, "Customer A", "tier 1")
            self.assertTrue(plaintext.startswith("mdm_pk_"))
            self.assertEqual(uuid.UUID(key.id).version, 4)
            self.assertEqual(
                (key.majordomo_api_key_id, key.name, key.description, key.is_active),
                (self.api_key_id, "Customer A", "tier 1", True),
            )
            self.assertEqual((key.revoked_at, key.last_used_at, key.request_count), (None, None, 0))
            self.assertEqual(
                support.run_sql("SELECT id::text, key_hash FROM proxy_keys"),
                [(key.id, hash_key(plaintext))],
            )
            self.assertNoPlaintextAtRest(plaintext)
            self.assertEqual(await self.store.get(key.id), key)

            other_api, _ = await KeyStore(self.db).create("Other product")
            other, _ = await self.store.create(str(other_api.id), "Customer B")
            self.assertEqual({k.id for k in await self.store.list()}, {key.id, other.id})
            self.assertEqual(await self.store.list(self.api_key_id), [key])
            self.assertEqual(await self.store.list(str(other_api.id)), [other])

            for bad in (str(uuid.uuid4()), "not-a-uuid"):
                with self.assertRaises(KeyNotFound):
                    await self.store.create(bad, "Orphan")
                with self.assertRaises(KeyNotFound):
                    await self.store.list(bad)
                with self.assertRaises(ProxyKeyNotFound):
                    await self.store.get(bad)
                with self.assertRaises(ProxyKeyNotFound):
                    await self.store.revoke(bad)
                with self.assertRaises(ProxyKeyNotFound):
                    await self.store.set_provider(bad, "openai", OPENAI)
                with self.assertRaises(ProxyKeyNotFound):
                    await self.store.remove_provider(bad, "openai")
                with self.assertRaises(ProxyKeyNotFound):
                    await self.store.list_providers(bad)
            self.assertEqual(len(support.run_sql("SELECT 1 FROM proxy_keys")), 2)

        return support.as_deferred(go())

    def test_providers_set_replace_remove(self) -> defer.Deferred[None]:
        """
        set_provider seals the key under the configured box (its fingerprint
        stored beside it, no plaintext anywhere) and NOTIFYs the proxy key's
        id; setting it again replaces it; list_providers names providers and
        fingerprints only; remove_provider deletes one, NOTIFYs, and says
        False when there was nothing to remove (no NOTIFY then).
        """

        async def go() -> None:
            key, plaintext = await self.store.create(self.api_key_id, "Customer A")
            notifies = await self.listen()
            await self.store.set_provider(key.id, "openai", OPENAI)
            await self.store.set_provider(key.id, "anthropic", ANTHROPIC)
            self.assertEqual(await self.payloads(notifies, 2), [key.id, key.id])
            first = self.stored()
            self.assertEqual(
                {p: f for (_, p), (_, f) in first.items()},
                {"openai": self.box_a.fingerprint, "anthropic": self.box_a.fingerprint},
            )
            providers = await self.store.list_providers(key.id)
            self.assertEqual([m.provider for m in providers], ["anthropic", "openai"])
            self.assertEqual({m.key_fingerprint for m in providers}, {self.box_a.fingerprint})
            self.assertNotIn(OPENAI, repr(providers))

            await self.store.set_provider(key.id, "openai", OPENAI + "-new")
            self.assertNotEqual(self.stored()[(key.id, "openai")], first[(key.id, "openai")])
            self.assertEqual(self.stored()[(key.id, "anthropic")], first[(key.id, "anthropic")])
            active = await self.store.find_active(hash_key(plaintext))
            assert active is not None
            self.assertEqual(
                dict(active.secrets), {"openai": OPENAI + "-new", "anthropic": ANTHROPIC}
            )
            self.assertNotIn(ANTHROPIC, repr(active))
            self.assertNoPlaintextAtRest(OPENAI, ANTHROPIC, plaintext)

            self.assertTrue(await self.store.remove_provider(key.id, "anthropic"))
            self.assertEqual(await self.payloads(notifies, 4), [key.id] * 4)
            self.assertFalse(await self.store.remove_provider(key.id, "anthropic"))
            self.assertEqual(
                [m.provider for m in await self.store.list_providers(key.id)], ["openai"]
            )
            await task.deferLater(reactor, 0.3, lambda: None)  # a late NOTIFY would be here
            self.assertEqual(len(notifies), 4)

        return support.as_deferred(go())

    def test_provider_refusals(self) -> defer.Deferred[None]:
        """
        No encryption key: set_provider is a VaultError and stores nothing.  An
        unknown provider, an empty key or one with spaces or control characters
        around it is a ProviderError whose message never holds the key.
        """

        async def go() -> None:
            key, _ = await self.store.create(self.api_key_id, "Customer A")
            with self.assertRaises(VaultError) as caught:
                await ProxyKeyStore(self.db).set_provider(key.id, "openai", OPENAI)
            self.assertIn("secrets.encryption_key", str(caught.exception))
            for provider, secret in (
                ("bedrock", OPENAI),
                ("OpenAI", OPENAI),
                ("openai", ""),
                ("openai", OPENAI + "\n"),
                ("openai", " " + OPENAI),
                ("openai", OPENAI + "\x00"),
                ("openai", OPENAI + "é"),
            ):
                with self.assertRaises(ProviderError) as refused:
                    await self.store.set_provider(key.id, provider, secret)
                self.assertNotIn(OPENAI, str(refused.exception))
            with self.assertRaises(ProviderError):
                await self.store.remove_provider(key.id, "bedrock")
            self.assertEqual(self.stored(), {})

        return support.as_deferred(go())

    def test_revoke(self) -> defer.Deferred[None]:
        """
        revoke() deactivates the proxy key (find_active finds nothing), NOTIFYs
        its id, leaves its sibling alone, and keeps the first revocation time.
        """

        async def go() -> None:
            key, plaintext = await self.store.create(self.api_key_id, "Leaked")
            kept, kept_plaintext = await self.store.create(self.api_key_id, "Kept")
            await self.store.set_provider(key.id, "openai", OPENAI)
            notifies = await self.listen()
            revoked = await self.store.revoke(key.id)
            self.assertEqual((revoked.id, revoked.is_active), (key.id, False))
            self.assertIsNotNone(revoked.revoked_at)
            self.assertEqual(await self.payloads(notifies, 1), [key.id])
            self.assertIsNone(await self.store.find_active(hash_key(plaintext)))
            active = await self.store.find_active(hash_key(kept_plaintext))
            assert active is not None
            self.assertEqual(
                (active.id, active.api_key_id, dict(active.secrets)), (kept.id, self.api_key_id, {})
            )
            again = await self.store.revoke(key.id)
            self.assertEqual((again.revoked_at, again.is_active), (revoked.revoked_at, False))
            self.assertEqual(await self.store.get(key.id), again)

        return support.as_deferred(go())

    def test_find_active(self) -> defer.Deferred[None]:
        """
        find_active(hash) opens every provider key of an active proxy key of
        an active Majordomo key; the plaintext itself, an unknown hash, or a
        revoked Majordomo key finds nothing.  A stored key sealed under
        another row's associated data (copied across rows) is a VaultError.
        """

        async def go() -> None:
            key, plaintext = await self.store.create(self.api_key_id, "Customer A")
            for provider, secret in (
                ("openai", OPENAI),
                ("anthropic", ANTHROPIC),
                ("gemini", GEMINI),
            ):
                await self.store.set_provider(key.id, provider, secret)
            active = await self.store.find_active(hash_key(plaintext))
            assert active is not None
            self.assertEqual((active.id, active.api_key_id), (key.id, self.api_key_id))
            self.assertEqual(
                dict(active.secrets), {"openai": OPENAI, "anthropic": ANTHROPIC, "gemini": GEMINI}
            )
            self.assertIsNone(await self.store.find_active(plaintext))
            self.assertIsNone(await self.store.find_active(hash_key(generate_proxy_key())))

            # A ciphertext moved to another provider's row does not open.
            support.run_sql(
                "UPDATE proxy_key_providers SET secret = (SELECT secret FROM proxy_key_providers "
                "WHERE provider = 'openai') WHERE provider = 'gemini'"
            )
            with self.assertRaises(VaultError) as caught:
                await self.store.find_active(hash_key(plaintext))
            self.assertNotIn(OPENAI, str(caught.exception))
            support.run_sql("DELETE FROM proxy_key_providers WHERE provider = 'gemini'")

            await KeyStore(self.db).revoke(self.api_key_id)
            self.assertIsNone(await self.store.find_active(hash_key(plaintext)))

        return support.as_deferred(go())

    def test_previous_keys_and_check_keys(self) -> defer.Deferred[None]:
        """
        Rows sealed with key A open with a store whose current key is B and
        whose previous keys include A, and check_keys passes; with B alone,
        check_keys is one VaultError naming A's fingerprint (never a key), and
        find_active refuses rather than return garbage.  New rows are sealed with B.
        """

        async def go() -> None:
            key, plaintext = await self.store.create(self.api_key_id, "Customer A")
            await self.store.set_provider(key.id, "openai", OPENAI)
            await self.store.check_keys()
            rotating = ProxyKeyStore(self.db, self.box_b, [SecretBox.from_hex(KEY_C), self.box_a])
            await rotating.check_keys()
            active = await rotating.find_active(hash_key(plaintext))
            assert active is not None
            self.assertEqual(dict(active.secrets), {"openai": OPENAI})
            await rotating.set_provider(key.id, "azure", "azure-MARKER-key")
            self.assertEqual(self.stored()[(key.id, "azure")][1], self.box_b.fingerprint)

            wrong = ProxyKeyStore(self.db, self.box_b)
            with self.assertRaises(VaultError) as caught:
                await wrong.check_keys()
            message = str(caught.exception)
            self.assertIn("sealed with another encryption key", message)
            self.assertIn(self.box_a.fingerprint, message)
            self.assertNotIn(self.box_b.fingerprint, message)
            for secret in (KEY_A, KEY_B, OPENAI):
                self.assertNotIn(secret, message)
            with self.assertRaises(VaultError):
                await wrong.find_active(hash_key(plaintext))
            with self.assertRaises(VaultError):
                await ProxyKeyStore(self.db).check_keys()

        return support.as_deferred(go())

    def test_rotate(self) -> defer.Deferred[None]:
        """
        rotate() re-seals every row under the new key in one transaction: no
        row's bytes are what they were, every fingerprint is the new key's,
        every provider key opens as before with the new key alone, each proxy
        key is NOTIFYd, and the old key no longer passes check_keys.
        """

        async def go() -> None:
            one, one_plaintext = await self.store.create(self.api_key_id, "One")
            two, two_plaintext = await self.store.create(self.api_key_id, "Two")
            await self.store.set_provider(one.id, "openai", OPENAI)
            await self.store.set_provider(one.id, "anthropic", ANTHROPIC)
            await self.store.set_provider(two.id, "gemini", GEMINI)
            before = self.stored()
            notifies = await self.listen()

            self.assertEqual(await rotate(self.db, self.box_b, [self.box_a]), 3)
            after = self.stored()
            self.assertEqual(set(after), set(before))
            for row, (sealed, fingerprint) in after.items():
                self.assertNotEqual(sealed, before[row][0])
                self.assertEqual(fingerprint, self.box_b.fingerprint)
            self.assertEqual(sorted(await self.payloads(notifies, 2)), sorted([one.id, two.id]))

            rotated = ProxyKeyStore(self.db, self.box_b)
            await rotated.check_keys()
            first = await rotated.find_active(hash_key(one_plaintext))
            second = await rotated.find_active(hash_key(two_plaintext))
            assert first is not None and second is not None
            self.assertEqual(dict(first.secrets), {"openai": OPENAI, "anthropic": ANTHROPIC})
            self.assertEqual(dict(second.secrets), {"gemini": GEMINI})
            with self.assertRaises(VaultError):
                await self.store.check_keys()
            self.assertNoPlaintextAtRest(OPENAI, ANTHROPIC, GEMINI)

            # Rotating again (rows already under B) still leaves no ciphertext as it was.
            self.assertEqual(await rotate(self.db, self.box_b, []), 3)
            for row, (sealed, _) in self.stored().items():
                self.assertNotEqual(sealed, after[row][0])

        return support.as_deferred(go())

    def test_rotate_is_one_transaction(self) -> defer.Deferred[None]:
        """
        A row that opens with none of the given keys stops the rotation with a
        VaultError and every row stays exactly as it was, the ones that
        would have opened included; nothing is NOTIFYd.  No rows: 0.
        """

        async def go() -> None:
            self.assertEqual(await rotate(self.db, self.box_b, [self.box_a]), 0)
            key, _ = await self.store.create(self.api_key_id, "Customer A")
            await self.store.set_provider(key.id, "openai", OPENAI)
            await self.store.set_provider(key.id, "anthropic", ANTHROPIC)
            stranger = ProxyKeyStore(self.db, SecretBox.from_hex(KEY_C))
            await stranger.set_provider(key.id, "gemini", GEMINI)
            before = self.stored()
            notifies = await self.listen()
            with self.assertRaises(VaultError) as caught:
                await rotate(self.db, self.box_b, [self.box_a])
            for secret in (KEY_A, KEY_B, KEY_C, GEMINI, OPENAI):
                self.assertNotIn(secret, str(caught.exception))
            self.assertEqual(self.stored(), before)
            await task.deferLater(reactor, 0.3, lambda: None)  # a late NOTIFY would be here
            self.assertEqual(notifies, [])

        return support.as_deferred(go())
