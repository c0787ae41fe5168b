# -*- test-case-name: tests.test_gateway -*-
"""
The running gateway: wires the database, key store, price book, log writer
and HTTP listener together and starts and stops them in order.

Stop order matters (DESIGN.md, "Known traps"): stop listening first, then
flush the log writer, then close the database and the upstream pool.
"""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from majordomo.config import Config
from majordomo.db import Database
from majordomo.health import Health, Ready
from majordomo.keys import KeyStore
from majordomo.logwriter import LogWriter
from majordomo.pricing_refresh import PricingService
from majordomo.pricing_show import configured_book
from majordomo.proxy import Gateway, ProxyResource

log = Logger()


class _Root(Resource):
    """C{/health} and C{/readyz}; every other path is proxied."""

    def __init__(self, proxy: Resource, ready: Ready) -> None:
        super().__init__()
        self._proxy = proxy
        self.putChild(b"health", Health())
        self.putChild(b"readyz", ready)

    def getChild(self, path: bytes, request: Any) -> Resource:
        request.postpath.insert(0, request.prepath.pop())
        return self._proxy


class _QuietSite(Site):
    """A Site that leaves request logging to the gateway (no access log lines)."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


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
        self.pricing = PricingService(
            configured_book(config),
            remote_url=config.pricing.remote_url,
            refresh_interval=config.pricing.refresh_interval,
            clock=reactor,
        )
        self.writer = LogWriter(
            self.db,
            batch_size=config.storage.batch_size,
            flush_interval=config.storage.flush_interval,
            clock=reactor,
        )
        self.writer.setServiceParent(self)
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = config.upstream.max_connections_per_host
        self._pool.retryAutomatically = False  # POST is never safe to replay
        agent = Agent(reactor, connectTimeout=config.upstream.connect_timeout, pool=self._pool)
        self.proxy = ProxyResource(
            Gateway(
                authenticate=self.keys.find_active,
                base_url=config.providers.base_url,
                http_client=HTTPClient(agent),
                prices=self.pricing,
                writer=self.writer,
                clock=reactor,
                response_timeout=config.upstream.response_timeout,
            )
        )
        self.site = _QuietSite(_Root(self.proxy, Ready(self._readiness_problem)))
        self.port: Any = None

    def _readiness_problem(self) -> str | None:
        if not self.db.available:
            return "PostgreSQL is not reachable"
        return None

    @defer.inlineCallbacks
    def startService(self) -> Any:
        host, port = self.config.server.host, self.config.server.port
        log.info("Starting Majordomo Gateway on {host}:{port}", host=host, port=port)
        super().startService()
        endpoint_type = TCP6ServerEndpoint if ":" in host else TCP4ServerEndpoint
        try:
            self.port = yield endpoint_type(self._reactor, port, interface=host).listen(self.site)
        except Exception as e:
            log.critical("Cannot listen on {host}:{port}: {error}", host=host, port=port, error=e)
            self._reactor.stop()
            return
        yield self.db.start()
        log.info("Connected to PostgreSQL")
        self.pricing.startService()
        log.info("Pricing data loaded ({count} models)", count=len(self.pricing.book))

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        if self.port is not None:
            yield self.port.stopListening()
        if self.pricing.running:
            yield self.pricing.stopService()
        yield super().stopService()  # the log writer flushes everything queued
        self.db.close()
        yield self._pool.closeCachedConnections()
