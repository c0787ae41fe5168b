# -*- test-case-name: tests.test_gateway -*-
"""C{GET /health} (the process is up) and C{GET /readyz} (it can do its job)."""

from __future__ import annotations

import json
from collections.abc import Callable

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
    Readiness: 200 C{{"status": "ok"}}, or 503 with the reason the gateway
    cannot serve (so a load balancer sends traffic elsewhere).
    """

    isLeaf = True

    def __init__(self, problem: Callable[[], str | None]) -> None:
        super().__init__()
        self._problem = problem

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        problem = self._problem()
        if problem is None:
            return json.dumps({"status": "ok"}).encode()
        request.setResponseCode(503)
        return json.dumps({"status": "unavailable", "reason": problem}).encode()
