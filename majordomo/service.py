# -*- test-case-name: tests.test_gateway -*-
"""
The running gateway: wires the database, key store, price book, log writer
and HTTP listener together and starts and stops them in order.

Stop order matters (DESIGN.md, "Known traps"): stop listening first, then
flush the log writer, then close the database and the upstream pool.

Before it listens, the service makes what running out of file descriptors
under load must not break: the soft RLIMIT_NOFILE raised to the hard limit
(L{majordomo.fdlimit}), the imports requests would make on first use
(L{majordomo.preload}), the configured providers' endpoints; and it listens
on a port that backs off when it cannot accept (L{majordomo.web.listening}).
"""

from __future__ import annotations

import os
import socket
import sys
import weakref
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site

from majordomo import providers
from majordomo.bodies import make_body_store
from majordomo.config import Config
from majordomo.db import Database
from majordomo.db.keycache import KeyCache
from majordomo.db.keys import KeyStore
from majordomo.fdlimit import DescriptorWatch, raise_open_files_limit
from majordomo.ledger.spool import Spool, SpoolError
from majordomo.ledger.writer import LogWriter
from majordomo.preload import load_lazy_imports
from majordomo.pricing import configured_book
from majordomo.pricing.refresh import PricingService
from majordomo.web.health import Health, Ready
from majordomo.web.limits import limit_request_bodies
from majordomo.web.listening import adopt_port, listen_tcp
from majordomo.web.metrics import GatewayMetrics, MetricsResource
from majordomo.web.proxy import Gateway, ProxyResource
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


class GatewayService(service.MultiService):
    """Majordomo Gateway as one twistd service."""

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self._reactor = reactor
        self.db = Database(config.storage.postgres, reactor=reactor)
        self.keys = KeyStore(self.db)
        self.key_cache = KeyCache(self.db, config.storage.postgres, reactor=reactor)
        self.pricing = PricingService(
            configured_book(config),
            remote_url=config.pricing.remote_url,
            refresh_interval=config.pricing.refresh_interval,
            clock=reactor,
        )
        self.metrics = GatewayMetrics()
        self.spool = Spool(config.storage.spool_path(), config.storage.spool_max_bytes)
        self.writer = LogWriter(
            self.db,
            self.spool,
            batch_size=config.storage.batch_size,
            flush_interval=config.storage.flush_interval,
            memory_limit=config.storage.memory_queue_limit,
            clock=reactor,
            observe_batch=self.metrics.batch_written,
        )
        self.bodies = make_body_store(config, config.storage.spool_path(), reactor=reactor)
        self.metrics.watch(self.writer, self.spool, self.bodies)
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

    @defer.inlineCallbacks
    def startService(self) -> Any:
        host, port = self.config.server.host, self.config.server.port
        descriptor_limit = raise_open_files_limit()
        log.info("Starting Majordomo Gateway on {host}:{port}", host=host, port=port)
        super().startService()
        load_lazy_imports()
        for provider in providers.PROVIDERS:
            if self.config.providers.base_url(provider):
                self.upstream.prepare(self.config.providers.base_url(provider))
        try:
            self.writer.replay(self.spool.open())
        except SpoolError as e:
            log.critical("Cannot start: {error} (storage.spool_dir)", error=e)
            self._failed_to_start()
            return
        self.writer.startService()
        bodies_started = self.bodies.start()
        if bodies_started is not None:
            bodies_started.addErrback(
                lambda f: log.critical(
                    "Bodies that cannot be uploaded have nowhere to wait: {error}",
                    error=f.getErrorMessage(),
                )
            )
        try:
            self.port = self._listen(host, port)
        except Exception as e:
            log.critical("Cannot listen on {host}:{port}: {error}", host=host, port=port, error=e)
            self._failed_to_start()
            return
        yield self.db.start()
        log.info("Connected to PostgreSQL")
        self.key_cache.start()  # not waited for: lookups use PostgreSQL until it listens
        self.pricing.startService()
        log.info("Pricing data loaded ({count} models)", count=len(self.pricing.book))
        log.info("{descriptor_limit}", descriptor_limit=descriptor_limit)
        self.descriptors.start()

    def _failed_to_start(self) -> None:
        """
        Stop the process with exit status 1, so that systemd's
        Restart=on-failure tries again and nobody mistakes a gateway that
        does not serve for a running one.  (twistd calls startService before
        its reactor runs, and knows no exit status but 0.)
        """
        self._reactor.callWhenRunning(self._reactor.stop)
        self._reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)

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

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """
        Stop in order: stop accepting, let in-flight requests finish (up to
        server.shutdown_timeout), close client connections, write what
        PostgreSQL takes (the rest stays journaled for the next start), close.
        """
        self.descriptors.stop()
        if self.port is not None:
            yield self.port.stopListening()
        if self.proxy.in_flight:
            log.info("Waiting for {n} requests in flight", n=self.proxy.in_flight)
        yield _bounded(self.proxy.drained(), self.config.server.shutdown_timeout, self._reactor)
        for channel in list(self.site.connections):
            if channel.transport is not None:
                channel.transport.loseConnection()
        # The requests just cut still add their rows (the client left, the
        # relay stops): wait for them before the log writer stops.
        yield _bounded(self.proxy.drained(), 5.0, self._reactor)
        if self.pricing.running:
            yield self.pricing.stopService()
        yield super().stopService()
        if self.writer.running:
            yield _bounded(self.writer.stopService(), 10.0, self._reactor)
        yield _bounded(self.bodies.stop(), 10.0, self._reactor)
        if self.writer.queued:
            log.info(
                "{n} request records stay in the spool for the next start", n=self.writer.queued
            )
        self.key_cache.stop()
        self.db.close()
        yield self.upstream.close()


def _bounded(d: defer.Deferred[Any], seconds: float, reactor: Any) -> defer.Deferred[Any]:
    """C{d}, or nothing after C{seconds}: shutdown must not hang."""
    d.addTimeout(seconds, reactor)
    return d.addErrback(lambda f: f.trap(defer.TimeoutError, defer.CancelledError))
