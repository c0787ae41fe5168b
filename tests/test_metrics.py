"""GET /metrics: each metric is there and moves when the gateway does its work."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer

from majordomo.web import metrics
from tests import support
from tests.gateway_case import GatewayTestCase
from tests.test_gateway import GUIDE_BODY


class ScrapingTestCase(GatewayTestCase):
    """A gateway whose /metrics a test reads as samples."""

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = await self.http.get(self.url + "/metrics")
        self.assertEqual(response.code, 200)
        self.assertTrue(
            response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        )
        text = (await response.content()).decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, samples: dict[Any, float], name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class MetricsTests(ScrapingTestCase):
    """Scrape, work, scrape again."""

    def test_request_metrics_move(self) -> defer.Deferred[None]:
        """
        A priced request, an unpriced one, one served at a service tier with
        no price and a 401 move the request counter by provider/model/status,
        the token and cost counters, the unpriced counter and the latency
        histograms; the writer's batches are timed.
        """

        async def go() -> None:
            before = await self.scrape()
            at_scale = json.loads(support.chat_completion("gpt-4o", 5, 5))
            at_scale["service_tier"] = "scale"
            self.upstream.queue = [
                support.Canned(chunks=[support.chat_completion("gpt-4o-mini-2024-07-18", 19, 10)]),
                support.Canned(chunks=[support.chat_completion("acme-model-1", 5, 5)]),
                support.Canned(chunks=[json.dumps(at_scale).encode()]),
            ]
            for _ in range(3):
                await self.post("/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key=self.key)
            await self.post("/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key="mdm_sk_wrong")
            await self.rows(3)
            after = await self.scrape()
            mini = {"provider": "openai", "model": "gpt-4o-mini-2024-07-18"}

            def moved(name: str, **labels: str) -> float:
                return self.value(after, name, **labels) - self.value(before, name, **labels)

            self.assertEqual(moved("majordomo_requests_total", status="200", **mini), 1)
            self.assertEqual(
                moved("majordomo_requests_total", provider="openai", model="", status="401"), 1
            )
            self.assertEqual(moved("majordomo_tokens_total", kind="input", **mini), 19)
            self.assertEqual(moved("majordomo_tokens_total", kind="output", **mini), 10)
            self.assertAlmostEqual(moved("majordomo_cost_usd_total", **mini), 0.00000885)
            self.assertEqual(
                moved("majordomo_unpriced_requests_total", provider="openai", model="acme-model-1"),
                1,
            )
            self.assertEqual(
                moved("majordomo_unpriced_requests_total", provider="openai", model="gpt-4o"), 1
            )
            for histogram in (
                "majordomo_upstream_ttfb_seconds_count",
                "majordomo_request_duration_seconds_count",
            ):
                self.assertEqual(moved(histogram, provider="openai"), 3)
            self.assertEqual(moved("majordomo_gateway_overhead_seconds_count"), 3)
            self.assertGreaterEqual(moved("majordomo_log_batch_seconds_count"), 1)
            self.assertEqual(moved("majordomo_rows_written_total"), 3)

        return support.as_deferred(go())

    def test_queue_spool_and_failures(self) -> defer.Deferred[None]:
        """
        With PostgreSQL gone, the queue and spool gauges count what waits and
        failed batches are counted; body upload gauges are reported too.
        """

        async def go() -> None:
            await self.post("/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key=self.key)
            await self.rows()
            self.gateway.db.close()
            await self.post("/v1/chat/completions", GUIDE_BODY, X_Majordomo_Key=self.key)
            await support.wait_for(lambda: self.gateway.metrics.batch_failures._value.get() > 0)
            samples = await self.scrape()
            self.assertEqual(self.value(samples, "majordomo_log_queue_records"), 1)
            self.assertGreater(self.value(samples, "majordomo_spool_bytes"), 100)
            self.assertGreaterEqual(self.value(samples, "majordomo_log_batch_failures_total"), 1)
            self.assertEqual(self.value(samples, "majordomo_body_uploads_pending"), 0)
            self.assertEqual(self.value(samples, "majordomo_body_upload_failures_total"), 0)
            self.assertEqual(self.value(samples, "majordomo_spool_write_failures_total"), 0)

        return support.as_deferred(go())


class ModelLabelBoundTests(ScrapingTestCase):
    """
    Model names are chosen by callers and providers: however many unique
    (or huge) names pass through, /metrics stays small and each request is
    still counted, under the price book's id, its own short name, or C{other}.
    """

    def test_unique_model_names_do_not_grow_metrics(self) -> defer.Deferred[None]:
        labelled = metrics.UNPRICED_MODELS_LABELLED + 20
        short = [f"acme-{i}" for i in range(labelled)]
        huge = [f"{i}-" + "x" * 50_000 for i in range(20)]
        names = ["gpt-4o-mini-2099-01-01", *short, *huge]

        async def go() -> None:
            self.upstream.queue = [
                support.Canned(chunks=[support.chat_completion(name, 5, 5)]) for name in names
            ]
            for name in names:
                response, _ = await self.post(
                    "/v1/chat/completions",
                    {"model": name, "messages": []},
                    X_Majordomo_Key=self.key,
                )
                self.assertEqual(response.code, 200)
            response = await self.http.get(self.url + "/metrics")
            text = (await response.content()).decode()
            self.assertLess(len(text), 200_000)
            self.assertNotIn("x" * 200, text)
            samples = await self.scrape()

            def requests(model: str) -> float:
                labels = {"provider": "openai", "model": model, "status": "200"}
                return self.value(samples, "majordomo_requests_total", **labels)

            # A dated snapshot priced as its base model is counted as that model.
            self.assertEqual(requests("gpt-4o-mini"), 1)
            kept = [name for name in short if requests(name) == 1]
            self.assertEqual(kept, short[: metrics.UNPRICED_MODELS_LABELLED])
            self.assertEqual(requests("other"), labelled - len(kept) + len(huge))
            # Every request still has its exact row.
            self.assertEqual(len(await self.rows(len(names))), len(names))

        return support.as_deferred(go())
