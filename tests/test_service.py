"""
The gateway's service tree: parts start in order and stop in the reverse
order, one after the other, and shutdown waits for work in flight as the
Deferreds themselves.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from majordomo.inflight import DeferWaiter, bounded
from majordomo.lifecycle import AfterConnected, CannotStart, Guarded, InOrder, Part
from majordomo.service import GatewayService
from tests import support


class DeferWaiterTests(SynchronousTestCase):
    """L{DeferWaiter.wait} fires when everything added has fired."""

    def test_nothing_pending(self) -> None:
        """With nothing added, wait() has already fired."""
        self.successResultOf(DeferWaiter().wait())

    def test_waits_for_all_including_late_additions(self) -> None:
        """
        wait() fires only after the last pending Deferred fires, including one
        added while waiting; results pass through to later callbacks.
        """
        waiter = DeferWaiter()
        first: defer.Deferred[int] = defer.Deferred()
        second: defer.Deferred[int] = defer.Deferred()
        self.assertIs(waiter.add(first), first)
        waited = waiter.wait()
        waiter.add(second)
        self.assertEqual(waiter.count, 2)
        first.callback(1)
        self.assertNoResult(waited)
        second.errback(ValueError("boom"))
        self.successResultOf(waited)
        self.assertEqual(self.successResultOf(first), 1)
        self.failureResultOf(second, ValueError)
        self.assertEqual(waiter.count, 0)

    def test_cancelling_a_wait_leaves_the_work(self) -> None:
        """Cancelling wait() (a shutdown timeout) does not cancel the work waited for."""
        waiter = DeferWaiter()
        work: defer.Deferred[None] = defer.Deferred()
        waiter.add(work)
        waited = waiter.wait()
        waited.cancel()
        self.failureResultOf(waited, defer.CancelledError)
        self.assertNoResult(work)
        work.callback(None)
        self.successResultOf(waiter.wait())


class _Recorder:
    """Parts that note their start and stop, and can be held while stopping."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.holds: dict[str, defer.Deferred[None]] = {}

    def part(self, name: str, fails: bool = False, holds: bool = False) -> Part:
        def start() -> None:
            if fails:
                raise CannotStart()
            self.events.append(f"start {name}")

        def stop() -> defer.Deferred[None] | None:
            self.events.append(f"stop {name}")
            if holds:
                d = self.holds[name] = defer.Deferred()
                return d
            return None

        return Part(name, start, stop)


class InOrderTests(SynchronousTestCase):
    """L{InOrder} starts children in order and stops them in reverse, sequentially."""

    def test_stop_waits_for_each_part(self) -> None:
        """
        A part is stopped only once the one after it has finished stopping,
        and the whole stop fires only when the last one has.
        """
        recorder = _Recorder()
        tree = InOrder()
        for name, holds in (("db", False), ("writer", True), ("listener", True)):
            recorder.part(name, holds=holds).setServiceParent(tree)
        tree.startService()
        self.assertEqual(recorder.events, ["start db", "start writer", "start listener"])
        stopped = tree.stopService()
        self.assertEqual(recorder.events[3:], ["stop listener"])
        recorder.holds["listener"].callback(None)
        self.assertEqual(recorder.events[3:], ["stop listener", "stop writer"])
        self.assertNoResult(stopped)
        recorder.holds["writer"].callback(None)
        self.assertEqual(recorder.events[3:], ["stop listener", "stop writer", "stop db"])
        self.successResultOf(stopped)

    def test_part_that_cannot_start(self) -> None:
        """
        A part raising L{CannotStart} leaves the parts after it unstarted, and
        stopping the tree stops only those that started.
        """
        recorder = _Recorder()
        tree = InOrder()
        recorder.part("journal").setServiceParent(tree)
        recorder.part("listener", fails=True).setServiceParent(tree)
        recorder.part("descriptors").setServiceParent(tree)
        self.assertRaises(CannotStart, tree.startService)
        self.successResultOf(tree.stopService())
        self.assertEqual(recorder.events, ["start journal", "stop journal"])

    def test_failed_stop_does_not_stop_the_rest(self) -> None:
        """A part whose stop fails is logged, and the parts before it still stop."""
        recorder = _Recorder()
        tree = InOrder()
        recorder.part("db").setServiceParent(tree)
        recorder.part("writer", holds=True).setServiceParent(tree)
        tree.startService()
        stopped = tree.stopService()
        recorder.holds["writer"].errback(RuntimeError("flush failed"))
        self.successResultOf(stopped)
        self.assertEqual(recorder.events[2:], ["stop writer", "stop db"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class AfterConnectedTests(SynchronousTestCase):
    """L{AfterConnected} starts its part once PostgreSQL answers, if still running."""

    def test_starts_when_connected(self) -> None:
        """The part starts when the connection fires, and stops with the tree."""
        recorder = _Recorder()
        connected: defer.Deferred[None] = defer.Deferred()
        tree = InOrder()
        AfterConnected(recorder.part("pricing"), lambda: connected).setServiceParent(tree)
        tree.startService()
        self.assertEqual(recorder.events, [])
        connected.callback(None)
        self.assertEqual(recorder.events, ["start pricing"])
        self.successResultOf(tree.stopService())
        self.assertEqual(recorder.events, ["start pricing", "stop pricing"])

    def test_never_connected(self) -> None:
        """Stopped before PostgreSQL answered, the part is neither started nor stopped."""
        recorder = _Recorder()
        connected: defer.Deferred[None] = defer.Deferred()
        tree = InOrder()
        AfterConnected(recorder.part("pricing"), lambda: connected).setServiceParent(tree)
        tree.startService()
        self.successResultOf(tree.stopService())
        connected.callback(None)
        self.assertEqual(recorder.events, [])


class _Held(service.Service):
    """A service whose start and stop return Deferreds the test fires."""

    def __init__(self) -> None:
        self.started: defer.Deferred[None] = defer.Deferred()
        self.stopped: defer.Deferred[None] = defer.Deferred()

    def startService(self) -> defer.Deferred[None]:
        super().startService()
        return self.started

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.stopped


class GuardedTests(SynchronousTestCase):
    """L{Guarded} runs a service as a part the tree never hangs on."""

    def test_stop_given_its_time_then_the_tree_goes_on(self) -> None:
        """
        The part stops the service it runs; a stop that never ends counts
        as done after stop_within seconds, so the tree stops its next part.
        """
        clock = task.Clock()
        recorder = _Recorder()
        held = _Held()
        tree = InOrder()
        recorder.part("db").setServiceParent(tree)
        Guarded("bodies", held, clock, stop_within=10.0).setServiceParent(tree)
        tree.startService()
        self.assertTrue(held.running)
        stopped = tree.stopService()
        self.assertFalse(held.running)
        clock.advance(9.9)
        self.assertEqual(recorder.events, ["start db"])
        self.assertNoResult(stopped)
        clock.advance(0.1)
        self.successResultOf(stopped)
        self.assertEqual(recorder.events, ["start db", "stop db"])

    def test_failed_start_is_logged_with_what_it_means(self) -> None:
        """
        A start whose Deferred fails is logged once as critical, saying
        what it means and why, and the part's start Deferred still succeeds.
        """
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        held = _Held()
        part = Guarded("bodies", held, task.Clock(), 10.0, start_failed="Bodies have nowhere")
        started = part.startService()
        assert started is not None
        held.started.errback(OSError("read-only file system"))
        self.successResultOf(started)
        critical = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.critical]
        self.assertEqual(critical, ["Bodies have nowhere: read-only file system"])


class BoundedTests(SynchronousTestCase):
    """L{bounded} lets shutdown go on after its time."""

    def test_gives_up_after_its_time(self) -> None:
        """A Deferred that never fires counts as done after C{seconds}."""
        clock = task.Clock()
        d = bounded(defer.Deferred(), 10.0, clock)
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.successResultOf(d)


class GatewayTreeTests(SynchronousTestCase):
    """The gateway's parts are children of its service, in the documented order."""

    def test_stop_order(self) -> None:
        """
        Stopping (the reverse of the children's order) goes: stop listening,
        drain the requests in flight, flush the writer, finish the body
        uploads, give back the policy leases (after the writer: the rows
        have then charged them), then the key cache, the PostgreSQL pool,
        the upstream pool, and last the journal.
        """
        gateway = GatewayService(support.gateway_config(1))  # built, never started
        stop_order = [child.name for child in reversed(list(gateway))]
        self.assertEqual(
            stop_order,
            [
                "descriptors (after PostgreSQL)",
                "listener",
                "requests",
                "pricing (after PostgreSQL)",
                "writer",
                "bodies",
                "policy leases",
                "key cache (after PostgreSQL)",
                "postgres",
                "upstream",
                "majordomo-spool-read",
                "journal",
            ],
        )

    def test_body_store_and_writer_are_the_services_their_parts_run(self) -> None:
        """The "bodies" and "writer" parts run the gateway's body store and log writer."""
        gateway = GatewayService(support.gateway_config(1))  # built, never started
        bodies = gateway.getServiceNamed("bodies")
        writer = gateway.getServiceNamed("writer")
        assert isinstance(bodies, Guarded) and isinstance(writer, Guarded)
        self.assertIs(bodies.inner, gateway.bodies)
        self.assertIs(writer.inner, gateway.writer)
        self.assertIsInstance(gateway.bodies, service.Service)
