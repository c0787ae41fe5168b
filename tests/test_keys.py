"""
Majordomo API keys and request ids: key generation and hashing, UUIDv7, and
the key store against a real PostgreSQL, including the revocation NOTIFY.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from txpostgres import txpostgres

from majordomo.db import Database
from majordomo.db.keys import (
    KEY_PREFIX,
    KEYS_CHANNEL,
    KeyNotFound,
    KeyStore,
    generate_key,
    hash_key,
)
from majordomo.ids import uuid7
from tests import support


class KeyGenerationTests(SynchronousTestCase):
    """Plaintext keys and the digest they are stored under."""

    def test_generated_key_format(self) -> None:
        """
        A key is C{mdm_sk_} followed by at least 40 URL-safe characters (256
        random bits), and no two generated keys are the same.
        """
        keys = [generate_key() for _ in range(200)]
        for key in keys:
            self.assertTrue(key.startswith("mdm_sk_"), key)
            self.assertRegex(key[len("mdm_sk_") :], r"^[A-Za-z0-9_-]{40,}$")
        self.assertEqual(KEY_PREFIX, "mdm_sk_")
        self.assertEqual(len(set(keys)), len(keys))

    def test_hash_is_sha256_hex(self) -> None:
        """hash_key is the lowercase SHA-256 hex digest of the UTF-8 key (FIPS 180-2 vectors)."""
        self.assertEqual(
            hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        )
        self.assertEqual(
            hash_key(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        )
        self.assertRegex(hash_key(generate_key()), r"^[0-9a-f]{64}$")
        self.assertNotEqual(hash_key("mdm_sk_a"), hash_key("mdm_sk_b"))


class UUID7Tests(SynchronousTestCase):
    """Request ids are RFC 9562 version 7 UUIDs that sort by time."""

    def test_version_and_variant(self) -> None:
        """Every id, given a time or not, is version 7 with the RFC variant bits."""
        ids = [uuid7() for _ in range(100)] + [uuid7(1764170112.5) for _ in range(100)]
        for request_id in ids:
            self.assertEqual(request_id.version, 7)
            self.assertEqual(request_id.variant, uuid.RFC_4122)
        self.assertEqual(len(set(ids)), len(ids))  # same millisecond, still distinct

    def test_embedded_timestamp(self) -> None:
        """The first 48 bits are the given time in Unix milliseconds."""
        arrived = datetime(2025, 11, 26, 15, 15, 12, 123000, tzinfo=UTC)
        request_id = uuid7(arrived.timestamp())
        self.assertEqual(request_id.int >> 80, 1764170112123)
        self.assertEqual(request_id.hex[:12], f"{1764170112123:012x}")
        self.assertEqual(uuid7(0.0).int >> 80, 0)

    def test_sorts_in_time_order(self) -> None:
        """
        Ids made for increasing times (a millisecond or more apart) sort in
        that order both as strings and as UUIDs, whatever their random bits.
        """
        start = datetime(2025, 11, 26, 23, 59, 59, 990000, tzinfo=UTC)
        times = [start + timedelta(milliseconds=ms) for ms in (0, 1, 2, 9, 10, 11, 1000, 86400000)]
        ids = [uuid7(t.timestamp()) for t in times]
        self.assertEqual(sorted(ids), ids)
        self.assertEqual(sorted(str(i) for i in ids), [str(i) for i in ids])
        # Whatever the random bits, a later millisecond sorts after an earlier one.
        later, earlier = times[1].timestamp(), times[0].timestamp()
        for _ in range(200):
            self.assertLess(str(uuid7(earlier)), str(uuid7(later)))

    def test_without_time_uses_now(self) -> None:
        """uuid7() with no time embeds the current time."""
        before = int(datetime.now(UTC).timestamp() * 1000)
        millis = uuid7().int >> 80
        after = int(datetime.now(UTC).timestamp() * 1000)
        self.assertTrue(before <= millis <= after, (before, millis, after))


class KeyStoreTests(TestCase):
    """KeyStore on the test database."""

    def setUp(self) -> defer.Deferred[None]:
        support.fresh_database()
        self.db = Database(support.pg_config(), reactor=reactor, pool_size=1)
        self.addCleanup(self.db.close)
        self.store = KeyStore(self.db)
        return self.db.start()

    async def listen(self) -> list[Any]:
        """LISTEN on the keys channel on a connection of our own; returns the notifies seen."""
        connection = txpostgres.Connection(reactor=reactor)
        await connection.connect(**support.pg_config().dsn_parameters())
        self.addCleanup(connection.close)
        notifies: list[Any] = []
        connection.addNotifyObserver(notifies.append)
        await connection.runOperation(f"LISTEN {KEYS_CHANNEL}")
        return notifies

    def test_create_and_find_active(self) -> defer.Deferred[None]:
        """
        create() returns the new key and its plaintext once; only the SHA-256
        of the plaintext is stored, and find_active(hash) finds the key's id.
        An unknown hash finds nothing.
        """

        async def go() -> None:
            key, plaintext = await self.store.create("Development", "laptop")
            self.assertTrue(plaintext.startswith(KEY_PREFIX))
            self.assertEqual(uuid.UUID(str(key.id)).version, 4)
            self.assertEqual(
                (key.name, key.description, key.is_active, key.revoked_at, key.request_count),
                ("Development", "laptop", True, None, 0),
            )
            self.assertIsNone(key.last_used_at)
            self.assertEqual(
                support.run_sql("SELECT id::text, key_hash FROM api_keys"),
                [(str(key.id), hash_key(plaintext))],
            )
            self.assertEqual((await self.store.find_active(hash_key(plaintext))).id, key.id)
            self.assertIsNone(await self.store.find_active(hash_key(generate_key())))
            self.assertIsNone(await self.store.find_active(plaintext))  # the hash, not the key

        return support.as_deferred(go())

    def test_revoke(self) -> defer.Deferred[None]:
        """
        revoke() deactivates the key at once (find_active no longer finds it,
        revoked_at is set, is_active false) and NOTIFYs the keys channel with
        the key's id; other keys stay active; revoking again keeps the first
        revocation time.
        """

        async def go() -> None:
            notifies = await self.listen()
            key, plaintext = await self.store.create("Leaked")
            other, other_plaintext = await self.store.create("Kept")

            revoked = await self.store.revoke(str(key.id))
            self.assertEqual((revoked.id, revoked.is_active), (key.id, False))
            self.assertIsNotNone(revoked.revoked_at)
            self.assertGreaterEqual(revoked.revoked_at, key.created_at)
            self.assertIsNone(await self.store.find_active(hash_key(plaintext)))
            self.assertEqual((await self.store.find_active(hash_key(other_plaintext))).id, other.id)
            self.assertEqual(await self.store.get(str(key.id)), revoked)

            await support.wait_for(lambda: notifies, timeout=5)
            self.assertEqual(
                [(n.channel, n.payload) for n in notifies], [(KEYS_CHANNEL, str(key.id))]
            )

            again = await self.store.revoke(str(key.id))
            self.assertEqual(again.revoked_at, revoked.revoked_at)
            self.assertFalse(again.is_active)

        return support.as_deferred(go())

    def test_update(self) -> defer.Deferred[None]:
        """
        update() changes the name and/or description it is given, keeps the
        one passed as None, moves updated_at forward, and leaves the key usable.
        """

        async def go() -> None:
            key, plaintext = await self.store.create("Old name", "old description")

            renamed = await self.store.update(str(key.id), "New name", None)
            self.assertEqual((renamed.name, renamed.description), ("New name", "old description"))
            self.assertGreater(renamed.updated_at, key.updated_at)

            described = await self.store.update(str(key.id), None, "new description")
            self.assertEqual(
                (described.name, described.description), ("New name", "new description")
            )
            self.assertEqual(await self.store.get(str(key.id)), described)
            self.assertEqual(described.created_at, key.created_at)
            self.assertEqual((await self.store.find_active(hash_key(plaintext))).id, key.id)

        return support.as_deferred(go())

    def test_list_newest_first(self) -> defer.Deferred[None]:
        """list() returns every key, revoked ones included, newest first."""

        async def go() -> None:
            first, _ = await self.store.create("First")
            second, _ = await self.store.create("Second")
            await self.store.revoke(str(first.id))
            self.assertEqual([k.name for k in await self.store.list()], ["Second", "First"])
            self.assertEqual([k.id for k in await self.store.list()], [second.id, first.id])

        return support.as_deferred(go())

    def test_missing_or_malformed_id(self) -> defer.Deferred[None]:
        """
        get(), update() and revoke() of an id no key has, or of a string that
        is not a UUID at all, fail with KeyNotFound and change nothing.
        """

        async def go() -> None:
            key, _ = await self.store.create("Only")
            before = support.run_sql("SELECT * FROM api_keys")
            for key_id in (str(uuid.uuid4()), "not-a-uuid", "", str(key.id) + "0"):
                with self.assertRaises(KeyNotFound):
                    await self.store.get(key_id)
                with self.assertRaises(KeyNotFound):
                    await self.store.update(key_id, "name", "description")
                with self.assertRaises(KeyNotFound):
                    await self.store.revoke(key_id)
            self.assertEqual(support.run_sql("SELECT * FROM api_keys"), before)

        return support.as_deferred(go())
