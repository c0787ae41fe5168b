"""
The API key cache against a real PostgreSQL: hits need no query, revocation
NOTIFYs evict at once, and a lost LISTEN connection means "ask the database"
until it is back, with the cache started afresh.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.protocols import portforward
from twisted.trial.unittest import TestCase

from majordomo.db import Database
from majordomo.db.keycache import LISTENER_APPLICATION_NAME, KeyCache
from majordomo.db.keys import KEYS_CHANNEL, KeyStore, generate_key, hash_key
from tests import support


class _Relay(portforward.ProxyServer):
    """A TCP relay to PostgreSQL whose connections can turn into black holes."""

    silent = False
    factory: _RelayFactory

    def connectionMade(self) -> None:
        self.factory.relays.append(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if not self.silent:
            super().dataReceived(data)


class _RelayClient(portforward.ProxyClient):
    def dataReceived(self, data: bytes) -> None:
        if not getattr(self.peer, "silent", False):
            super().dataReceived(data)


class _RelayClientFactory(portforward.ProxyClientFactory):
    protocol = _RelayClient


_Relay.clientProtocolFactory = _RelayClientFactory


class _RelayFactory(portforward.ProxyFactory):
    protocol = _Relay
    noisy = False

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.relays: list[_Relay] = []

    def silence(self) -> None:
        """Every open connection stops carrying bytes, without closing: a lost network."""
        for relay in self.relays:
            relay.silent = True

    def close(self) -> None:
        for relay in self.relays:
            for side in (relay, relay.peer):
                if side is not None and side.transport is not None:
                    side.transport.loseConnection()


def _sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class KeyCacheTests(TestCase):
    """One KeyCache on its own LISTEN connection, beside a small pool."""

    timeout = 30

    async def _set_up(self) -> None:
        support.fresh_database()
        self.db = Database(support.pg_config(), reactor=reactor, pool_size=2)
        self.addCleanup(self.db.close)
        await self.db.start()
        self.store = KeyStore(self.db)
        self.lookups: list[Any] = []  # key hashes looked up in PostgreSQL
        real = self.db.run_query

        def counting(sql: str, params: Any = None, retry_for: float = 0.0) -> defer.Deferred[Any]:
            if "WHERE key_hash" in sql:
                self.lookups.append(params[0])
            return real(sql, params, retry_for)

        self.db.run_query = counting  # type: ignore[method-assign]

    def setUp(self) -> defer.Deferred[None]:
        return support.as_deferred(self._set_up())

    async def cache(self, config: Any = None, start: bool = True, **kwargs: Any) -> KeyCache:
        """A KeyCache stopped at cleanup; started and listening unless C{start} is False."""
        cache = KeyCache(self.db, config or support.pg_config(), reactor=reactor, **kwargs)
        self.addCleanup(cache.stopService)
        if start:
            await cache.startService()
            self.assertTrue(cache.trusted)
        return cache

    async def key(self, name: str = "test") -> tuple[str, str]:
        """A new active key: (id, hash)."""
        key, plaintext = await self.store.create(name)
        return str(key.id), hash_key(plaintext)

    async def queries(self, cache: KeyCache, key_hash: str) -> tuple[Any, int]:
        """Authenticate once: (answer, how many PostgreSQL lookups it took)."""
        before = len(self.lookups)
        answer = await cache.authenticate(key_hash)
        return (answer.id if answer else None), len(self.lookups) - before

    def test_cached_key_needs_no_query(self) -> defer.Deferred[None]:
        """The first lookup of an active key queries PostgreSQL; the next ones do not."""

        async def go() -> None:
            cache = await self.cache()
            key_id, key_hash = await self.key()
            self.assertEqual(await self.queries(cache, key_hash), (key_id, 1))
            for _ in range(3):
                self.assertEqual(await self.queries(cache, key_hash), (key_id, 0))
            self.assertEqual(cache.size, 1)

        return support.as_deferred(go())

    def test_revoke_evicts_at_once(self) -> defer.Deferred[None]:
        """
        `KeyStore.revoke` (which NOTIFYs) makes the next lookups of that key
        answer None within a second, while other cached keys stay cached.
        """

        async def go() -> None:
            cache = await self.cache()
            key_id, key_hash = await self.key("revoked")
            other_id, other_hash = await self.key("kept")
            for h in (key_hash, other_hash):
                await cache.authenticate(h)
            await self.store.revoke(key_id)
            revoked_at = reactor.seconds()
            while await cache.authenticate(key_hash) is not None:
                self.assertLess(reactor.seconds() - revoked_at, 1.0, "still accepted after 1 s")
                await _sleep(0.01)
            self.assertEqual(await self.queries(cache, other_hash), (other_id, 0))
            self.assertEqual(cache.size, 1)

        return support.as_deferred(go())

    def test_unknown_keys_are_not_cached(self) -> defer.Deferred[None]:
        """Unknown and inactive keys are looked up every time and take no memory."""

        async def go() -> None:
            cache = await self.cache()
            key_id, key_hash = await self.key()
            await self.store.revoke(key_id)
            for h in [hash_key(generate_key()) for _ in range(50)] + [key_hash, key_hash]:
                self.assertEqual(await self.queries(cache, h), (None, 1))
            self.assertEqual(cache.size, 0)

        return support.as_deferred(go())

    def test_size_is_bounded(self) -> defer.Deferred[None]:
        """Past max_entries the least recently used key is evicted (and looked up again)."""

        async def go() -> None:
            cache = await self.cache(max_entries=2)
            (id1, h1), (id2, h2), (id3, h3) = [await self.key(f"k{i}") for i in range(3)]
            for h in (h1, h2, h1, h3):  # h1 used again, so h2 is the oldest when h3 comes
                await cache.authenticate(h)
            self.assertEqual(cache.size, 2)
            self.assertEqual(await self.queries(cache, h1), (id1, 0))
            self.assertEqual(await self.queries(cache, h3), (id3, 0))
            self.assertEqual(await self.queries(cache, h2), (id2, 1))

        return support.as_deferred(go())

    def test_not_trusted_before_listening(self) -> defer.Deferred[None]:
        """Before start() (and after stop()) every lookup goes to PostgreSQL."""

        async def go() -> None:
            cache = await self.cache(start=False)
            key_id, key_hash = await self.key()
            for _ in range(3):
                self.assertEqual(await self.queries(cache, key_hash), (key_id, 1))
            self.assertEqual(cache.size, 0)
            await cache.startService()
            await cache.authenticate(key_hash)
            self.assertEqual(await self.queries(cache, key_hash), (key_id, 0))
            cache.stopService()
            self.assertFalse(cache.trusted)
            self.assertEqual(await self.queries(cache, key_hash), (key_id, 1))

        return support.as_deferred(go())

    def test_stop_while_connecting(self) -> defer.Deferred[None]:
        """stop() right after start() leaves nothing running (trial checks the reactor)."""

        async def go() -> None:
            cache = await self.cache(start=False)
            cache.startService()
            cache.stopService()
            await _sleep(0.2)
            self.assertFalse(cache.trusted)

        return support.as_deferred(go())

    def test_lost_listener_means_database_then_fresh_cache(self) -> defer.Deferred[None]:
        """
        When the LISTEN connection's backend is terminated, the cache stops
        being used at once: every lookup queries PostgreSQL, so a revocation
        whose NOTIFY was missed still counts.  Once the listener is back the
        cache starts empty: the key revoked meanwhile is refused, and a live
        key is looked up once, then cached again.
        """

        async def go() -> None:
            # Reconnect only after 0.5 s, so the test sees the listener down.
            cache = await self.cache(reconnection_delays=lambda: itertools.repeat(0.5))
            missed_id, missed_hash = await self.key("missed")
            live_id, live_hash = await self.key("live")
            for h in (missed_hash, live_hash):
                await cache.authenticate(h)
            terminated = support.run_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                (LISTENER_APPLICATION_NAME,),
            )
            self.assertEqual(terminated, [(True,)])
            await support.wait_for(lambda: not cache.trusted, timeout=2)
            # A revocation this cache cannot hear about: no NOTIFY.
            support.run_sql("UPDATE api_keys SET is_active = false WHERE id = %s", (missed_id,))
            self.assertEqual(await self.queries(cache, missed_hash), (None, 1))
            for _ in range(3):
                self.assertEqual(await self.queries(cache, live_hash), (live_id, 1))
            self.assertFalse(cache.trusted)
            await support.wait_for(lambda: cache.trusted, timeout=5)
            self.assertEqual(cache.size, 0)
            self.assertEqual(await self.queries(cache, missed_hash), (None, 1))
            self.assertEqual(await self.queries(cache, live_hash), (live_id, 1))
            self.assertEqual(await self.queries(cache, live_hash), (live_id, 0))
            # And the new LISTEN hears revocations.
            await self.store.revoke(live_id)
            await support.wait_for(lambda: cache.size == 0, timeout=1)

        return support.as_deferred(go())

    def test_silent_listener_detected_by_probe(self) -> defer.Deferred[None]:
        """
        A LISTEN connection that silently stops carrying bytes (no FIN, no
        RST, as when a network drops) is declared dead by the periodic probe
        within two probe intervals; the cache is distrusted, then rebuilt on a
        fresh connection.
        """

        async def go() -> None:
            relay = _RelayFactory(support.PG_HOST, support.PG_PORT)
            port = reactor.listenTCP(0, relay, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            self.addCleanup(relay.close)
            config = dataclasses.replace(
                support.pg_config(), host="127.0.0.1", port=port.getHost().port
            )
            cache = await self.cache(config, probe_interval=0.2)
            key_id, key_hash = await self.key()
            await cache.authenticate(key_hash)
            self.assertEqual(await self.queries(cache, key_hash), (key_id, 0))
            relay.silence()
            silenced = reactor.seconds()
            await support.wait_for(lambda: not cache.trusted, timeout=2)
            self.assertLess(reactor.seconds() - silenced, 2 * 0.2 + 0.3)
            self.assertEqual(await self.queries(cache, key_hash), (key_id, 1))
            await support.wait_for(lambda: cache.trusted, timeout=5)
            self.assertEqual(cache.size, 0)
            self.assertEqual(await self.queries(cache, key_hash), (key_id, 1))
            self.assertEqual(await self.queries(cache, key_hash), (key_id, 0))

        return support.as_deferred(go())

    def test_notify_during_lookup_is_not_lost(self) -> defer.Deferred[None]:
        """
        A lookup that read the key as active before it was revoked, but whose
        answer arrives after the revocation NOTIFY, is not cached: the next
        lookup asks PostgreSQL again and is refused.
        """

        async def go() -> None:
            cache = await self.cache()
            key_id, key_hash = await self.key("raced")
            marker_id, marker_hash = await self.key("marker")
            await cache.authenticate(marker_hash)
            real = self.db.run_query
            read: list[Any] = []
            release: defer.Deferred[None] = defer.Deferred()

            async def held(sql: str, params: Any = None, **kwargs: Any) -> Any:
                rows = await real(sql, params, **kwargs)
                if params == (key_hash,) and not read:
                    read.append(rows)
                    await release
                return rows

            self.db.run_query = (  # type: ignore[method-assign]
                lambda *a, **kw: defer.Deferred.fromCoroutine(held(*a, **kw))
            )
            lookup = cache.authenticate(key_hash)
            await support.wait_for(lambda: read)  # read as active, answer held back
            await self.store.revoke(key_id)
            # NOTIFYs arrive in commit order: once the marker is gone, the
            # raced key's NOTIFY has been handled too.
            await self.store.revoke(marker_id)
            await support.wait_for(lambda: cache.size == 0, timeout=1)
            release.callback(None)
            self.assertEqual((await lookup).id, key_id)  # in flight before the revoke
            self.assertEqual(cache.size, 0)
            self.assertIsNone(await cache.authenticate(key_hash))

        return support.as_deferred(go())

    def test_notify_without_key_id_forgets_everything(self) -> defer.Deferred[None]:
        """A NOTIFY on the channel whose payload is not a key id empties the cache."""

        async def go() -> None:
            cache = await self.cache()
            for name in ("a", "b"):
                await cache.authenticate((await self.key(name))[1])
            self.assertEqual(cache.size, 2)
            support.run_sql("SELECT pg_notify(%s, '')", (KEYS_CHANNEL,))
            await support.wait_for(lambda: cache.size == 0, timeout=1)

        return support.as_deferred(go())
