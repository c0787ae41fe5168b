# -*- test-case-name: tests.test_pricing_refresh -*-
"""
Live pricing: fetch the remote price table every C{pricing.refresh_interval}
and layer it over the bundled one.  A failed or malformed fetch keeps the
last good table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from majordomo.pricing import PriceBook
from majordomo.pricing.prices import PricingError
from majordomo.pricing.sources import RemotePrices, fetch_url, parse_remote_prices

log = Logger()


class PricingService(service.Service):
    """
    Keeps C{self.book} current: layers a remote price table over C{base} every
    C{refresh_interval} seconds.  A failed or unusable fetch is logged and the
    last good book stays; the refresh loop never stops on an error.

    C{clock} is an C{IReactorTime} (default: the global reactor); C{fetch}
    takes a URL and fires with the body (default: L{fetch_url}, with treq).
    """

    def __init__(
        self,
        base: PriceBook,
        remote_url: str | None,
        refresh_interval: float,
        overrides: Mapping[str, Any] | None = None,
        clock: IReactorTime | None = None,
        fetch: Callable[[str], Deferred[bytes]] = fetch_url,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.book = base if overrides is None else base.with_overrides(overrides)
        self.remote_url = remote_url
        self.refresh_interval = refresh_interval
        self._clock = clock
        self._fetch = fetch
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        """Refresh now, then every interval (if a remote source is configured)."""
        super().startService()
        if self.remote_url and self.refresh_interval > 0:
            self._loop = LoopingCall(self.refresh)
            self._loop.clock = self._clock
            self._loop.start(self.refresh_interval, now=True).addErrback(
                lambda f: log.failure("price refresh loop stopped", f)
            )

    def stopService(self) -> Deferred[None] | None:
        """Stop refreshing."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def refresh(self) -> Deferred[None]:
        """Fetch the remote table once and swap in a new book; never fails."""
        assert self.remote_url is not None
        url = self.remote_url
        fetched: Deferred[bytes] = maybeDeferred(self._fetch, url)
        swapped: Deferred[None] = fetched.addCallback(self._swap, url)
        return swapped.addErrback(self._keep, url)

    def _swap(self, data: bytes, url: str) -> None:
        """Replace the book with one layering the fetched prices."""
        remote: RemotePrices = parse_remote_prices(data)
        version = remote.version
        if version is None:
            day = datetime.fromtimestamp(self._clock.seconds(), UTC).date()
            version = f"litellm-remote {day.isoformat()}"
        self.book = self.book.with_remote(remote, version)
        log.info("prices refreshed from {url}: {version}", url=url, version=version)

    def _keep(self, failure: Failure, url: str) -> None:
        """Log a failed refresh; the last good book stays."""
        if failure.check(PricingError):
            log.warn(
                "unusable prices from {url}, keeping the last good table: {error}",
                url=url,
                error=failure.value,
            )
        else:
            log.warn(
                "price refresh from {url} failed, keeping the last good table: {error}",
                url=url,
                error=failure.getErrorMessage(),
            )
