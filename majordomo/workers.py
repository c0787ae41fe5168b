# -*- test-case-name: tests.test_workers -*-
"""
C{majordomo serve --workers N}: N gateway processes sharing one port
(SO_REUSEPORT, C{server.reuse_port}), started and supervised by this one.

One Python process is CPU-bound at about 1k requests/s (docs/ARCHITECTURE.md, "Known traps"); the
kernel spreads new connections over the workers.  The supervisor forwards
SIGTERM/SIGINT to every worker, waits for them to drain and exit, and
restarts a worker that dies on its own (giving up if they keep dying at once).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger

from majordomo.logs import WORKER_ENV

log = Logger()

RESTART_DELAY = 1.0
QUICK_DEATH = 5.0  # a worker that dies this soon after starting counts as a failed start
MAX_QUICK_DEATHS = 5


class _Worker(protocol.ProcessProtocol):
    def __init__(self, supervisor: Supervisor, number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.started = supervisor.reactor.seconds()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason.value)


class Supervisor:
    """Keeps C{count} workers running C{command} until told to stop."""

    def __init__(
        self, reactor: Any, count: int, command: Sequence[str], env: dict[str, str]
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.command = list(command)
        self.env = env
        self.workers: dict[int, tuple[_Worker, Any]] = {}
        self.stopping = False
        self.quick_deaths = 0
        self.exit_code = 0

    def start(self) -> None:
        for number in range(1, self.count + 1):
            self.spawn(number)
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def spawn(self, number: int) -> None:
        if self.stopping:
            return
        worker = _Worker(self, number)
        env = {**self.env, WORKER_ENV: str(number), "MAJORDOMO_SERVER_REUSE_PORT": "true"}
        process = self.reactor.spawnProcess(
            worker, self.command[0], self.command, env=env, childFDs={0: 0, 1: 1, 2: 2}
        )
        self.workers[number] = (worker, process)

    def worker_ended(self, worker: _Worker, status: Any) -> None:
        self.workers.pop(worker.number, None)
        if self.stopping:
            return
        log.warn("Worker {n} exited ({status}); restarting it", n=worker.number, status=status)
        if self.reactor.seconds() - worker.started < QUICK_DEATH:
            self.quick_deaths += 1
        else:
            self.quick_deaths = 0
        if self.quick_deaths >= MAX_QUICK_DEATHS:
            log.critical("Workers keep dying at start; stopping")
            self.exit_code = 1
            self.reactor.stop()
            return
        self.reactor.callLater(RESTART_DELAY, self.spawn, worker.number)

    def stop(self) -> defer.Deferred[Any]:
        """Forward SIGTERM to every worker and wait until all have exited."""
        self.stopping = True
        waiting = []
        for worker, process in list(self.workers.values()):
            waiting.append(worker.ended)
            with contextlib.suppress(ProcessExitedAlready):
                process.signalProcess(signal.SIGTERM)
        return defer.DeferredList(waiting)


def run_workers(count: int, command: Sequence[str]) -> int:
    """Run the supervisor until SIGTERM/SIGINT; returns the exit code."""
    from twisted.internet import reactor

    supervisor = Supervisor(reactor, count, command, dict(os.environ))
    reactor.callWhenRunning(supervisor.start)
    reactor.run()
    return supervisor.exit_code
