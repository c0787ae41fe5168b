# -*- test-case-name: tests.test_metrics -*-
"""
C{GET /metrics}: the gateway's counters and histograms in the Prometheus
text format (prometheus-client), one registry per gateway service.

Per-request numbers are observed by the proxy when a request ends; the
state of the log writer, the spool and body uploads is read when scraped.

Model names come from callers and providers, so they are not used as labels
as they are: a priced model is labelled with the price book's id for it (the
model's own name, or for a dated snapshot priced as its base model, the base
model's); the first L{UNPRICED_MODELS_LABELLED} short unpriced names a
process sees keep theirs (so an operator can see which model lacks a price);
every other model is C{other}.  Unique names cannot grow the scrape or the
process's memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Request

from majordomo.usage import Usage

# Distinct unpriced model names given a label of their own, and their longest length.
UNPRICED_MODELS_LABELLED = 100
MAX_MODEL_LABEL_LENGTH = 100
OTHER_MODEL = "other"
_LABEL_SAFE = re.compile(r"[A-Za-z0-9._:/@+-]+")

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class GatewayMetrics:
    """The gateway's metrics; C{registry} is what /metrics renders."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._unpriced_labels: set[str] = set()
        r = self.registry
        self.requests = Counter(
            "majordomo_requests", "Requests proxied", ["provider", "model", "status"], registry=r
        )
        self.ttfb = Histogram(
            "majordomo_upstream_ttfb_seconds",
            "Time from arrival to the provider's response headers",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "majordomo_request_duration_seconds",
            "Time from arrival to the last byte sent to the client",
            ["provider"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "majordomo_gateway_overhead_seconds",
            "Time the gateway itself adds (before forwarding and after the provider finished)",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "majordomo_tokens", "Tokens used", ["provider", "model", "kind"], registry=r
        )
        self.cost = Counter(
            "majordomo_cost_usd",
            "Cost in USD (exact values are in the rows)",
            ["provider", "model"],
            registry=r,
        )
        self.unpriced = Counter(
            "majordomo_unpriced_requests",
            "Requests whose model, or the service tier it was served at, had no price (cost NULL)",
            ["provider", "model"],
            registry=r,
        )
        self.batch_latency = Histogram(
            "majordomo_log_batch_seconds",
            "Time to write one batch of rows to PostgreSQL",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=r,
        )
        self.batch_failures = Counter(
            "majordomo_log_batch_failures", "Batches PostgreSQL did not take", registry=r
        )
        # Labelled by the refusal's code: a handful of fixed values.
        self.policy_refusals = Counter(
            "majordomo_policy_refusals",
            "Requests a key's policy refused, by rule (model_not_allowed, budget_exceeded, ...)",
            ["rule"],
            registry=r,
        )

    def request_finished(
        self,
        provider: str,
        status: int,
        usage: Usage | None,
        cost: Any,
        ttfb: float | None,
        duration: float,
        overhead: float | None,
    ) -> None:
        """Record one finished request (answered or not)."""
        model = self.model_label(usage.model if usage else None, cost)
        child = self._child
        child(self.requests, provider, model, str(status)).inc()
        child(self.duration, provider).observe(duration)
        if ttfb is not None:
            child(self.ttfb, provider).observe(ttfb)
        if overhead is not None:
            self.overhead.observe(overhead)
        if usage is None:
            return
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cached", usage.cached_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            if count:
                child(self.tokens, provider, model, kind).inc(count)
        if cost is not None and cost.total_cost:
            child(self.cost, provider, model).inc(float(cost.total_cost))
        if cost is not None and usage.input_tokens and not _fully_priced(cost):
            child(self.unpriced, provider, model).inc()

    def model_label(self, model: str | None, cost: Any) -> str:
        """The C{model} label of a request: bounded whatever names callers send."""
        if not model:
            return ""
        if cost is not None and cost.priced and cost.pricing_key:
            # The price book's own id: one of a known, bounded set.
            return str(cost.pricing_key)
        if model in self._unpriced_labels:
            return model
        if (
            len(self._unpriced_labels) < UNPRICED_MODELS_LABELLED
            and len(model) <= MAX_MODEL_LABEL_LENGTH
            and _LABEL_SAFE.fullmatch(model)
        ):
            self._unpriced_labels.add(model)
            return model
        return OTHER_MODEL

    def _child(self, metric: Any, *labels: str) -> Any:
        """
        C{metric.labels(*labels)}, remembered: labels() validates its
        arguments and takes a lock on every call.  (The metric keeps every
        child it made anyway, so this holds nothing more.)
        """
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def batch_written(self, seconds: float, ok: bool) -> None:
        """The log writer finished (or failed) one batch."""
        self.batch_latency.observe(seconds)
        if not ok:
            self.batch_failures.inc()

    def watch(self, writer: Any, spool: Any, bodies: Any) -> None:
        """Report the writer's queue, the spool and body uploads when scraped."""
        self.registry.register(_StateCollector(writer, spool, bodies))


class _StateCollector(Collector):
    """Gauges and counters that live in other objects, read at scrape time."""

    def __init__(self, writer: Any, spool: Any, bodies: Any) -> None:
        self._writer, self._spool, self._bodies = writer, spool, bodies

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily(
            "majordomo_log_queue_records", "Rows not yet committed", value=self._writer.queued
        )
        yield GaugeMetricFamily(
            "majordomo_spool_bytes", "Bytes of journaled rows on disk", value=self._spool.size
        )
        yield CounterMetricFamily(
            "majordomo_spool_write_failures",
            "Rows that could not be journaled (disk full or unwritable)",
            value=self._writer.spool_failures,
        )
        yield CounterMetricFamily(
            "majordomo_rows_written",
            "Rows committed to PostgreSQL",
            value=self._writer.rows_written,
        )
        yield GaugeMetricFamily(
            "majordomo_body_uploads_pending",
            "Bodies waiting to be stored (memory and disk)",
            value=self._bodies.pending,
        )
        yield CounterMetricFamily(
            "majordomo_body_upload_failures",
            "Body upload attempts that failed",
            value=self._bodies.failures,
        )


class MetricsResource(Resource):
    """Serves the registry in the Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return bytes(generate_latest(self._metrics.registry))


def _fully_priced(cost: Any) -> bool:
    """Whether the model had a price, at the service tier the answer was served at too."""
    return bool(cost.priced) and cost.unpriced_service_tier is None
