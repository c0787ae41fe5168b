# -*- test-case-name: tests.test_logwriter -*-
"""
One request's row in C{llm_requests}, built up as the request goes through
the gateway and handed to the log writer as a plain dict of column values.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from majordomo.usage import COUNT_FIELDS, ERROR_NOT_BILLED, UNKNOWN, Usage

# The token columns of llm_requests: the count fields of a Usage.
TOKEN_COLUMNS = COUNT_FIELDS

# Statuses the gateway itself gives when the exchange ended without an answer.
CLIENT_CLOSED_REQUEST = 499


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


@dataclass
class RequestRecord:
    """What the gateway knows about a request so far."""

    id: uuid.UUID
    arrived: float
    key_id: str
    provider: str
    method: str
    path: str
    model_requested: str | None
    provider_key_hash: str | None
    ttfb_ms: float | None = None
    raw_metadata: dict[str, str] = field(default_factory=dict)
    indexed_metadata: dict[str, str] = field(default_factory=dict)
    provider_alias: str | None = None
    proxy_key_id: str | None = None  # the proxy key whose provider key was swapped in
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. body storage columns

    @classmethod
    def start(cls, request_id: uuid.UUID, **kwargs: Any) -> RequestRecord:
        return cls(id=request_id, **kwargs)

    def ttfb(self, now: float) -> None:
        """Note when the upstream's response headers arrived."""
        self.ttfb_ms = (now - self.arrived) * 1000.0

    def _row(self, now: float, status_code: int) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "created_at": _timestamp(self.arrived),
            "responded_at": _timestamp(now),
            "majordomo_api_key_id": self.key_id,
            "provider": self.provider,
            "provider_api_key_hash": self.provider_key_hash,
            "method": self.method,
            "path": self.path,
            "model_requested": self.model_requested,
            "status_code": status_code,
            "ttfb_ms": self.ttfb_ms,
            "duration_ms": (now - self.arrived) * 1000.0,
            "raw_metadata": self.raw_metadata,
            "indexed_metadata": self.indexed_metadata,
            "provider_api_key_alias": self.provider_alias,
            "proxy_key_id": self.proxy_key_id,
            **self.extra,
        }

    def finish(
        self,
        now: float,
        status_code: int,
        usage: Usage,
        cost: Any,
        stream: bool,
        error_message: str | None,
    ) -> dict[str, Any]:
        """The row of a request the upstream answered (fully or not)."""
        row = self._row(now, status_code)
        row.update(
            stream=stream,
            error_message=error_message,
            model=usage.model or self.model_requested,
            service_tier=usage.service_tier,
            usage_status=usage.usage_status,
            raw_usage=usage.raw,
            input_cost=cost.input_cost,
            output_cost=cost.output_cost,
            total_cost=cost.total_cost,
            pricing_key=cost.pricing_key,
            pricing_tier=cost.pricing_tier,
            price_source=cost.price_source,
        )
        for column in TOKEN_COLUMNS:
            row[column] = getattr(usage, column)
        return row

    def failed(
        self, now: float, status_code: int, message: str, maybe_billed: bool = False
    ) -> dict[str, Any]:
        """
        The row of a request that got no answer from the upstream.  A refused
        connection was never billed (tokens and cost 0); after a timeout or a
        client disconnect what the provider billed is unknown (NULL).
        """
        row = self._row(now, status_code)
        row.update(
            stream=False,
            error_message=message,
            model=self.model_requested,
            usage_status=UNKNOWN if maybe_billed else ERROR_NOT_BILLED,
        )
        if not maybe_billed:
            row.update({column: 0 for column in TOKEN_COLUMNS})
            row.update(input_cost="0", output_cost="0", total_cost="0")
        return row
