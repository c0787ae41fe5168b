# -*- test-case-name: tests.test_policy_leases -*-
"""
This process's share of every limit it enforces, leased from PostgreSQL, so
that admitting a request is arithmetic in memory, not a round trip.

For each window of a limit (a key, a bucket, a kind, a window start) the
process holds a L{Holding}: the share PostgreSQL granted it
(C{majordomo_lease}, one atomic statement under the window's row lock, which
never grants more than the limit less what is spent and leased to others)
and what its requests in flight have reserved out of it.  When a request
does not fit, the process asks for more (at most one question per holding at
a time; the others wait for its answer); when the answer grants nothing,
the limit is reached.

Budgets: a request reserves its estimated cost; when it ends, the exact cost
leaves the share here, and leaves the lease in PostgreSQL when its row is
inserted (the batch statement moves it to C{spent}), so the lease and the
spend are never counted twice.  Rates: a request takes one request (rpm) at
once; tokens (tpm) are taken when the request ends, by what it used.

A share is only used while its lease is known to be alive: it is renewed
every C{ttl / 4}; one not renewed for C{3 ttl / 4} is not used (another
gateway may take it over once it expires), and what happens then is
C{policies.when_unavailable}.  Idle holdings give their share back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from majordomo.db import Database
from majordomo.logtext import printable

log = Logger()

LEASE = "SELECT share, granted FROM majordomo_lease(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
RENEW = """
UPDATE policy_windows w SET leases = jsonb_set(w.leases, ARRAY[%s],
    jsonb_set(w.leases->%s, '{x}', to_jsonb(extract(epoch FROM clock_timestamp()) + %s)))
FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::timestamptz[]) AS h(k, b, kind, ws)
WHERE w.majordomo_api_key_id = h.k AND w.bucket = h.b AND w.kind = h.kind
  AND w.window_start = h.ws AND w.leases ? %s
RETURNING w.majordomo_api_key_id::text, w.bucket, w.kind, w.window_start
"""
# Rate-limit windows are deleted this long after they began (any gateway
# with holdings does it, at most this often).
RATE_WINDOWS_KEPT = 300
DROP_OLD_RATE_WINDOWS = (
    "DELETE FROM policy_windows WHERE kind IN ('rpm', 'tpm') "
    "AND window_start < now() - %s::interval"
)
# A lease question that takes longer than this is taken as PostgreSQL being away
# (the lease function itself gives up waiting for a row lock after 1.5 s) ...
ASK_TIMEOUT = 2.0
# ... and for this long afterwards no question is asked: requests that need one
# are answered by policies.when_unavailable at once instead of each waiting.
UNAVAILABLE_BACKOFF = 1.0
# A window PostgreSQL granted nothing for is not asked again for as much within
# this long: at a reached limit, refused requests cost no round trip each.
REFUSAL_MEMORY = 1.0


class Unavailable(Exception):
    """PostgreSQL could not be asked for a lease, and no live share covers the request."""


@dataclass(frozen=True)
class WindowId:
    """Which window of which limit: the primary key of policy_windows."""

    key_id: str
    bucket: str
    kind: str
    start: datetime


@dataclass
class Holding:
    """This process's share of one window, and what its requests have taken from it."""

    window: WindowId
    limit: Decimal
    share: Decimal = Decimal(0)  # granted, less what finished requests used
    reserved: Decimal = Decimal(0)  # held by requests in flight
    alive_until: float = 0.0  # the share may be used until then (clock seconds)
    last_used: float = 0.0
    asking: defer.Deferred[bool] | None = None
    # The last question PostgreSQL granted nothing for: its need, and when.
    refused_need: Decimal | None = None
    refused_at: float = 0.0

    def known_refused(self, need: Decimal, now: float) -> bool:
        """True if PostgreSQL refused as much as C{need} under a second ago."""
        return (
            self.refused_need is not None
            and need >= self.refused_need
            and now - self.refused_at < REFUSAL_MEMORY
        )

    @property
    def available(self) -> Decimal:
        return self.share - self.reserved


class LeaseBook:
    """Every holding of this process, the questions to PostgreSQL, renewal and return."""

    def __init__(
        self, db: Database, clock: IReactorTime, ttl: float = 60.0, holder: str | None = None
    ) -> None:
        self._db = db
        self._clock = clock
        self.ttl = ttl
        self.holder = holder or str(uuid.uuid4())
        self._holdings: dict[WindowId, Holding] = {}
        self._loop: task.LoopingCall | None = None
        self._unavailable_until = 0.0
        self._next_cleanup = 0.0

    def __len__(self) -> int:
        return len(self._holdings)

    def holding(self, window: WindowId, limit: Decimal) -> Holding:
        """The holding of C{window} (a new, empty one the first time); its limit kept current."""
        held = self._holdings.get(window)
        if held is None:
            held = self._holdings[window] = Holding(window, limit)
        held.limit = limit
        return held

    async def take(self, held: Holding, amount: Decimal, need: Decimal, chunk: Decimal) -> bool:
        """
        Reserve C{amount} of C{held} once its live share leaves C{need} (at
        most C{amount}) available, asking PostgreSQL for more (at least
        C{chunk}) when it does not.  False when the limit cannot cover it;
        L{Unavailable} when PostgreSQL cannot be asked.
        """
        for _ in range(3):  # this take's own questions; waiting on others' is not counted
            while held.asking is not None:
                await _settled(held.asking)
            now = self._clock.seconds()
            held.last_used = now
            if now < held.alive_until and held.available >= need:
                held.reserved += amount
                return True
            if held.known_refused(need - held.available, now):
                return False  # asked a moment ago: the limit is reached
            if now < self._unavailable_until:
                raise Unavailable("PostgreSQL did not answer a lease question just now")
            held.asking = defer.Deferred.fromCoroutine(self._ask(held, need, chunk))
            try:
                granted = await held.asking
            finally:
                held.asking = None
            if not granted:
                return False
        return False

    def release(self, held: Holding, reserved: Decimal, used: Decimal) -> None:
        """A request ended: its reservation is freed and what it used leaves the share."""
        held.reserved -= reserved
        held.share -= used

    async def _ask(self, held: Holding, need: Decimal, chunk: Decimal) -> bool:
        """One lease question: the share grows by what PostgreSQL grants (maybe nothing)."""
        window = held.window
        lost_track = self._clock.seconds() >= held.alive_until
        if lost_track:
            # The lease may have expired in PostgreSQL: what is in flight is all we hold.
            held.share = held.reserved
        short = max(need - held.available, Decimal(0))
        asked = self._db.run_query(
            LEASE,
            (
                window.key_id,
                window.bucket,
                window.kind,
                window.start,
                self.holder,
                held.limit,
                max(short, chunk),
                short,
                self.ttl,
                held.share if lost_track else None,
            ),
        )
        asked.addTimeout(ASK_TIMEOUT, self._clock)
        try:
            rows = await asked
        except Exception as e:
            self._unavailable_until = self._clock.seconds() + UNAVAILABLE_BACKOFF
            raise Unavailable(printable(e)) from e
        granted = Decimal(rows[0][1])
        held.share += granted
        if granted > 0:
            held.refused_need = None
        else:
            held.refused_need, held.refused_at = short, self._clock.seconds()
        held.alive_until = self._clock.seconds() + self.ttl * 0.75
        return granted > 0

    def start(self) -> None:
        """Renew the leases every C{ttl / 4} and give back the idle ones."""
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self.ttl / 4, now=False)

    def stop(self) -> defer.Deferred[None]:
        """Stop renewing and give every share back (what stays in flight is lost with us)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return defer.Deferred.fromCoroutine(self._give_back(list(self._holdings.values())))

    def _tick(self) -> None:
        d = defer.Deferred.fromCoroutine(self._renew_and_sweep())
        d.addErrback(lambda f: log.warn("Renewing policy leases failed: {e}", e=f.value))

    async def _renew_and_sweep(self) -> None:
        now = self._clock.seconds()
        idle = [
            h
            for h in self._holdings.values()
            if h.reserved == 0 and h.asking is None and now - h.last_used > self.ttl / 2
        ]
        await self._give_back(idle)
        await self._renew()
        if self._holdings and now >= self._next_cleanup:
            # Rate-limit windows are of no use once their minute is over.
            self._next_cleanup = now + RATE_WINDOWS_KEPT
            await self._db.run_operation(DROP_OLD_RATE_WINDOWS, (f"{RATE_WINDOWS_KEPT} seconds",))

    async def _renew(self) -> None:
        held = [h for h in self._holdings.values() if h.alive_until > self._clock.seconds()]
        if not held:
            return
        started = self._clock.seconds()
        windows = [h.window for h in held]
        rows = await self._db.run_query(
            RENEW,
            (
                self.holder,
                self.holder,
                self.ttl,
                [w.key_id for w in windows],
                [w.bucket for w in windows],
                [w.kind for w in windows],
                [w.start for w in windows],
                self.holder,
            ),
        )
        alive = {WindowId(k, b, kind, ws) for k, b, kind, ws in rows}
        for h in held:
            # A lease PostgreSQL no longer has was taken over: resynchronise on next use.
            h.alive_until = started + self.ttl * 0.75 if h.window in alive else 0.0

    async def _give_back(self, holdings: list[Holding]) -> None:
        for held in holdings:
            self._holdings.pop(held.window, None)
            unused = held.share - held.reserved
            if unused <= 0 or self._clock.seconds() >= held.alive_until:
                continue
            w = held.window
            try:
                await self._db.run_query(
                    LEASE,
                    (w.key_id, w.bucket, w.kind, w.start, self.holder, held.limit)
                    + (-unused, Decimal(0), self.ttl, None),
                )
            except Exception as e:
                log.info("Could not give back a policy lease (it expires): {e}", e=e)


async def _settled(d: defer.Deferred[Any]) -> None:
    """Wait for C{d} to fire, whatever its result (its owner handles it)."""
    waiter: defer.Deferred[None] = defer.Deferred()

    def fired(result: object) -> object:
        waiter.callback(None)
        return result

    d.addBoth(fired)
    await waiter
