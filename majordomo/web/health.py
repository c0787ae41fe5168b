# -*- test-case-name: tests.test_gateway -*-
"""C{GET /health} (the process is up) and C{GET /readyz} (it can do its job)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request


class Health(Resource):
    """Liveness: 200 C{ok} whenever the reactor answers."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"ok"


class Ready(Resource):
    """
    Readiness: 200 C{{"status": "ok", ...}} while the gateway can accept and
    account for traffic, or 503 with the reason it cannot (so a load balancer
    sends traffic elsewhere).  The details say whether PostgreSQL is
    reachable and how many records wait in the spool.
    """

    isLeaf = True

    def __init__(self, report: Callable[[], tuple[str | None, dict[str, Any]]]) -> None:
        super().__init__()
        self._report = report

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        problem, details = self._report()
        if problem is None:
            return json.dumps({"status": "ok", **details}).encode()
        request.setResponseCode(503)
        return json.dumps({"status": "unavailable", "reason": problem, **details}).encode()
