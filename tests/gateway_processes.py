"""
Real gateway processes for tests that need more than one: `twistd -n
majordomo` on a port of its own with a spool of its own, sharing the test
database, and a wait until every one of them hears revocations (LISTEN).
"""

from __future__ import annotations

import contextlib
import os
import signal
from functools import partial
from typing import Any

from twisted.internet import defer, error, protocol, reactor
from twisted.trial.unittest import TestCase

from majordomo.db.keycache import LISTENER_APPLICATION_NAME
from tests import support
from tests.test_tap import free_port


class GatewayProcess(protocol.ProcessProtocol):
    """One gateway process: its port and everything it printed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.output = b""
        self.ended: defer.Deferred[None] = defer.Deferred()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)

    def started(self) -> bool:
        """True once it has connected and loaded its prices (it then listens)."""
        return b"Pricing data loaded" in self.output


def spawn_gateway(case: TestCase, env: dict[str, str]) -> GatewayProcess:
    """Start a gateway process with C{env}; the test's cleanup stops it (SIGTERM)."""
    spool = case.mktemp()
    os.makedirs(spool)
    gateway = GatewayProcess(free_port())
    env = {**env, "MAJORDOMO_SERVER_PORT": str(gateway.port), "MAJORDOMO_STORAGE_SPOOL_DIR": spool}
    args = [support.TWISTD_BIN, "--nodaemon", "--pidfile=", "majordomo"]
    process = reactor.spawnProcess(gateway, args[0], args, env=env, path=None)

    def stop() -> defer.Deferred[None]:
        with contextlib.suppress(error.ProcessExitedAlready):
            process.signalProcess(signal.SIGTERM)
        return gateway.ended

    case.addCleanup(stop)
    return gateway


async def wait_ready(gateways: list[GatewayProcess]) -> None:
    """Until every gateway has started and its revocation listener is in place."""
    for gateway in gateways:
        await support.wait_for(partial(GatewayProcess.started, gateway), timeout=30)

    def all_listening() -> bool:
        # The last statement of each listener is LISTEN, or the SELECT 1
        # probe, which only runs once LISTEN is in place.
        rows = support.run_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND datname = current_database() AND state = 'idle' "
            "AND (query ILIKE 'LISTEN%%' OR query = 'SELECT 1')",
            (LISTENER_APPLICATION_NAME,),
        )
        return bool(rows[0][0] == len(gateways))

    await support.wait_for(all_listening, timeout=10)
