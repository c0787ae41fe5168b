# -*- test-case-name: tests.test_gateway -*-
"""
The running gateway: wires the database, key store, price book, log writer
and HTTP listener together, as the children of one service tree that starts
them in order and stops them in the reverse order, each after the other
(L{majordomo.lifecycle.InOrder}).

Stop order matters (docs/ARCHITECTURE.md, "Known traps"): stop listening first, then
drain the requests in flight (bounded), then flush the log writer, then
finish the body uploads, then close the database and the upstream pool.

Before it listens, the service makes what running out of file descriptors
under load must not break: the soft RLIMIT_NOFILE raised to the hard limit
(L{majordomo.fdlimit}), the imports requests would make on first use
(L{majordomo.preload}), the configured providers' endpoints; and it listens
on a port that backs off when it cannot accept (L{majordomo.web.listening}).

With C{secrets.encryption_key} set, proxy keys are enabled: once PostgreSQL
answers, every stored provider key must have been sealed with a configured
encryption key, or the gateway cannot start (a wrong key would otherwise be
found one request at a time).
"""

from __future__ import annotations

import os
import socket
import sys
import weakref
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site

from majordomo import providers
from majordomo.bodies.store import make_body_store
from majordomo.config import Config
from majordomo.db import Database
from majordomo.db.keycache import KeyCache
from majordomo.db.keys import KeyStore
from majordomo.fdlimit import DescriptorWatch, raise_open_files_limit
from majordomo.inflight import bounded
from majordomo.ledger.spool import Spool, SpoolError
from majordomo.ledger.writer import LogWriter, reader_in
from majordomo.lifecycle import (
    AfterConnected,
    CannotStart,
    Guarded,
    InOrder,
    Part,
    ThreadPoolService,
)
from majordomo.logtext import printable
from majordomo.policy.gate import PolicyGate
from majordomo.policy.leases import LeaseBook
from majordomo.preload import load_lazy_imports
from majordomo.pricing import configured_book
from majordomo.pricing.refresh import PricingService
from majordomo.proxykeys.cache import ProxyKeyCache
from majordomo.proxykeys.store import ProxyKeyStore
from majordomo.vault import VaultError, configured_box, previous_boxes
from majordomo.web.gateway import Gateway
from majordomo.web.health import Health, Ready
from majordomo.web.limits import limit_request_bodies
from majordomo.web.listening import adopt_port, listen_tcp
from majordomo.web.metrics import GatewayMetrics, MetricsResource
from majordomo.web.proxy import ProxyResource
from majordomo.web.upstream import UpstreamClient

log = Logger()


class _Root(Resource):
    """C{/health}, C{/readyz} and C{/metrics}; every other path is proxied."""

    def __init__(self, proxy: Resource, ready: Ready, metrics: Resource) -> None:
        super().__init__()
        self._proxy = proxy
        self.putChild(b"health", Health())
        self.putChild(b"readyz", ready)
        self.putChild(b"metrics", metrics)

    def getChild(self, path: bytes, request: Any) -> Resource:
        request.postpath.insert(0, request.prepath.pop())
        return self._proxy


class _QuietSite(Site):
    """
    A Site that leaves request logging to the gateway (no access log lines)
    and knows its open connections, so shutdown can close them.
    """

    noisy = False
    protocol = HTTPChannel  # type: ignore[assignment]  # HTTP/1.1; shutdown closes its transport

    def __init__(self, resource: Resource) -> None:
        # Bodies are forwarded as they are: never parse them as HTML form posts
        # (twisted.web would otherwise parse every POST's Content-Type with the
        # email package, about 10% of the gateway's CPU under load).
        super().__init__(resource, parsePOSTFormSubmission=False)
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        self.connections.add(channel)
        return channel

    def log(self, request: Any) -> None:
        pass


def _exit_failed() -> None:
    """End the process at once with status 1 (its log lines are already written)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


class GatewayService(InOrder):
    """
    Majordomo Gateway as one twistd service.  Its children, in start order
    (they stop in the reverse one): the journal (spool), its reader threads,
    the upstream pool, the PostgreSQL pool, the key cache, the policy leases,
    body storage, the log writer, live pricing, the request drain, the listening port and the
    descriptor watch.  The key cache, pricing and the descriptor watch start
    once PostgreSQL first answers; everything else at once.
    """

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self._reactor = reactor
        self.db = Database(config.storage.postgres, reactor=reactor)
        self.keys = KeyStore(self.db)
        self.key_cache = KeyCache(self.db, config.storage.postgres, reactor=reactor)
        self.key_cache.setName("key cache")
        box = configured_box(config.secrets)
        self.proxy_keys: ProxyKeyStore | None = None
        self.proxy_key_cache: ProxyKeyCache | None = None
        if box is not None:
            self.proxy_keys = ProxyKeyStore(self.db, box, previous_boxes(config.secrets))
            self.proxy_key_cache = ProxyKeyCache(self.proxy_keys, self.key_cache)
        self.pricing = PricingService(
            configured_book(config),
            remote_url=config.pricing.remote_url,
            refresh_interval=config.pricing.refresh_interval,
            clock=reactor,
        )
        self.metrics = GatewayMetrics()
        self.spool = Spool(config.storage.spool_path(), config.storage.spool_max_bytes)
        self.spool_readers = ThreadPool(minthreads=0, maxthreads=1, name="majordomo-spool-read")
        self.writer = LogWriter(
            self.db,
            self.spool,
            reader_in(self.spool_readers, reactor),
            batch_size=config.storage.batch_size,
            flush_interval=config.storage.flush_interval,
            memory_limit=config.storage.memory_queue_limit,
            clock=reactor,
            observe_batch=self.metrics.batch_written,
        )
        self.bodies = make_body_store(config, config.storage.spool_path(), reactor=reactor)
        self.metrics.watch(self.writer, self.spool, self.bodies)
        self.leases = LeaseBook(self.db, reactor, ttl=config.policies.lease_ttl)
        self.upstream = UpstreamClient(
            reactor, config.upstream.max_connections_per_host, config.upstream.connect_timeout
        )
        self.proxy = ProxyResource(
            Gateway(
                authenticate=self.key_cache.authenticate,
                base_url=config.providers.base_url,
                upstream=self.upstream,
                prices=self.pricing,
                writer=self.writer,
                clock=reactor,
                response_timeout=config.upstream.response_timeout,
                idle_timeout=config.upstream.idle_timeout,
                metrics=self.metrics,
                bodies=None if config.logging.body_storage == "none" else self.bodies,
                policies=PolicyGate(self.leases, self.pricing, config.policies.when_unavailable),
                find_proxy_key=None if self.proxy_key_cache is None else self.proxy_key_cache.find,
            )
        )
        self.site = _QuietSite(
            _Root(self.proxy, Ready(self._readiness), MetricsResource(self.metrics))
        )
        limit_request_bodies(
            self.site,
            config.server.max_body_size,
            config.server.body_timeout,
            clock=reactor,
            on_rejected=self.proxy.record_rejection,
            head_timeout=config.server.head_timeout,
        )
        self.descriptors = DescriptorWatch(reactor)
        self.port: Any = None
        self._descriptor_limit = ""
        self._build_tree()

    def _build_tree(self) -> None:
        """The children, in start order; see the class docstring for why this one."""
        parts = [
            Part("journal", self._open_journal, self._close_journal),
            ThreadPoolService(self.spool_readers),
            Part("upstream", self._prepare_upstream, self.upstream.close),
            Part("postgres", self._connect_database, self.db.close),
            # Not waited for: lookups use PostgreSQL until it listens.
            AfterConnected(self.key_cache, self.db.when_connected),
            # Before the writer, so it stops after it: what is given back is then exact.
            Part("policy leases", self.leases.start, self._stop_leases),
            Guarded(
                "bodies",
                self.bodies,
                self._reactor,
                stop_within=10.0,
                start_failed="Bodies that cannot be uploaded have nowhere to wait",
            ),
            Guarded("writer", self.writer, self._reactor, stop_within=10.0),
            AfterConnected(
                Part("pricing", self._start_pricing, self.pricing.stopService),
                self.db.when_connected,
            ),
            *self._proxy_key_parts(),
            Part("requests", stop=self._drain_requests),
            Part("listener", self._start_listening, self._stop_listening),
            AfterConnected(
                Part("descriptors", self._watch_descriptors, self.descriptors.stop),
                self.db.when_connected,
            ),
        ]
        for part in parts:
            part.setServiceParent(self)

    def _proxy_key_parts(self) -> list[AfterConnected]:
        """With proxy keys enabled: the check of their stored keys, once PostgreSQL answers."""
        if self.proxy_keys is None:
            return []
        check = Part("proxy keys", self._check_proxy_keys)
        return [AfterConnected(check, self.db.when_connected)]

    def _readiness(self) -> tuple[str | None, dict[str, Any]]:
        """
        Ready while records can be journaled (PostgreSQL may be away meanwhile)
        and requests can be forwarded: file descriptors are left, and upstream
        connections do not keep failing inside the gateway.
        """
        details = {
            "postgres": "reachable" if self.db.available else "unreachable",
            "spooled_records": self.writer.queued,
            "pending_bodies": self.bodies.pending,
        }
        out_of_descriptors = self.descriptors.problem()  # first: the spool may fail for it
        if out_of_descriptors is not None:
            return out_of_descriptors, details
        if not self.spool.writable() or not self.writer.spool_ok:
            return "request records cannot be journaled (spool full or not writable)", details
        return self.upstream.cannot_forward(), details

    def startService(self) -> None:
        """
        Start every part (see the class docstring).  A part that cannot
        start ends the process with exit status 1, see L{_failed_to_start}.
        """
        host, port = self.config.server.host, self.config.server.port
        self._descriptor_limit = raise_open_files_limit()
        log.info("Starting Majordomo Gateway on {host}:{port}", host=host, port=port)
        load_lazy_imports()
        try:
            super().startService()
        except CannotStart:
            self._failed_to_start()

    def _failed_to_start(self) -> None:
        """
        Stop the process with exit status 1, so that systemd's
        Restart=on-failure tries again and nobody mistakes a gateway that
        does not serve for a running one.  (twistd calls startService before
        its reactor runs, and knows no exit status but 0.)
        """
        self._reactor.callWhenRunning(self._reactor.stop)
        self._reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)

    # The parts' own steps, in start order.

    def _open_journal(self) -> None:
        try:
            self.writer.replay(self.spool.open())
        except SpoolError as e:
            log.critical("Cannot start: {error} (storage.spool_dir)", error=e)
            raise CannotStart() from e

    def _close_journal(self) -> None:
        if self.writer.queued:
            log.info(
                "{n} request records stay in the spool for the next start", n=self.writer.queued
            )
        self.spool.close()

    def _prepare_upstream(self) -> None:
        for provider in providers.PROVIDERS:
            if self.config.providers.base_url(provider):
                self.upstream.prepare(self.config.providers.base_url(provider))

    def _connect_database(self) -> defer.Deferred[None]:
        connected = self.db.start()
        connected.addCallback(self._connected)
        return connected

    def _connected(self, _: object) -> None:
        if self.running:  # not while a gateway that could not start stops
            log.info("Connected to PostgreSQL")

    def _start_pricing(self) -> None:
        self.pricing.startService()
        log.info("Pricing data loaded ({count} models)", count=len(self.pricing.book))

    def _check_proxy_keys(self) -> None:
        if self.proxy_keys is not None:
            defer.Deferred.fromCoroutine(self._proxy_keys_checked(self.proxy_keys))

    async def _proxy_keys_checked(self, store: ProxyKeyStore) -> None:
        """Every stored provider key can be opened, or the gateway stops (exit status 1)."""
        try:
            await store.check_keys()
        except VaultError as e:
            log.critical("Cannot start: {error} (secrets.encryption_key)", error=e)
            self._failed_to_start()
            return
        except Exception as e:
            # Not a key problem: lookups still open every secret, and fail if they cannot.
            log.warn("Cannot check the stored provider keys now: {error}", error=printable(e))
            return
        if self.running:
            log.info("Proxy keys enabled")

    def _stop_leases(self) -> defer.Deferred[None]:
        return bounded(self.leases.stop(), 5.0, self._reactor)

    def _drain_requests(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        """
        Let in-flight requests finish (up to server.shutdown_timeout), then
        close client connections and wait for the requests just cut.
        """
        if self.proxy.in_flight:
            log.info("Waiting for {n} requests in flight", n=self.proxy.in_flight)
        await bounded(self.proxy.drained(), self.config.server.shutdown_timeout, self._reactor)
        for channel in list(self.site.connections):
            if channel.transport is not None:
                channel.transport.loseConnection()
        # The requests just cut still add their rows (the client left, the
        # relay stops): wait for them before the log writer stops.
        await bounded(self.proxy.drained(), 5.0, self._reactor)

    def _start_listening(self) -> None:
        host, port = self.config.server.host, self.config.server.port
        try:
            self.port = self._listen(host, port)
        except Exception as e:
            log.critical("Cannot listen on {host}:{port}: {error}", host=host, port=port, error=e)
            raise CannotStart() from e

    def _listen(self, host: str, port: int) -> Any:
        """Listen; with server.reuse_port, on a socket other processes may share."""
        if not self.config.server.reuse_port:
            return listen_tcp(self._reactor, port, self.site, host)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as shared:
            shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            shared.bind((host, port))
            shared.listen(1024)
            shared.setblocking(False)
            # The port takes its own copy of the descriptor.
            return adopt_port(self._reactor, shared.fileno(), family, self.site)

    def _stop_listening(self) -> defer.Deferred[None] | None:
        stopped: defer.Deferred[None] | None = self.port.stopListening()
        return stopped

    def _watch_descriptors(self) -> None:
        log.info("{descriptor_limit}", descriptor_limit=self._descriptor_limit)
        self.descriptors.start()
