# -*- test-case-name: tests.test_admission,tests.test_gateway -*-
"""What the proxy needs from the running service, in one injectable bundle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime

from majordomo.bodies.store import BodyStore
from majordomo.ledger.writer import RecordSink
from majordomo.policy.gate import PolicyGate
from majordomo.pricing import PriceSource
from majordomo.web.admission import Authenticate, FindProxyKey
from majordomo.web.metrics import GatewayMetrics
from majordomo.web.upstream import UpstreamClient


@dataclass
class Gateway:
    """The proxy's collaborators and settings; tests give it fakes (tests/fakes.py)."""

    authenticate: Authenticate  # key hash -> Deferred[ActiveKey | None]
    base_url: Callable[[str], str]  # provider -> configured base URL ("" = not configured)
    upstream: UpstreamClient
    prices: PriceSource  # its .book is read for each request (a refresh swaps it)
    writer: RecordSink  # takes each request's row
    clock: IReactorTime
    response_timeout: float
    idle_timeout: float
    metrics: GatewayMetrics
    bodies: BodyStore | None = None  # when logging.body_storage is not none
    policies: PolicyGate | None = None  # checks the keys that have a policy
    # proxy key hash -> Deferred[ActiveProxyKey | None]; None: proxy keys are refused
    find_proxy_key: FindProxyKey | None = None
    # Largest response body kept for body storage (the client always gets all of it).
    body_capture_limit: int = 32 * 1024 * 1024
