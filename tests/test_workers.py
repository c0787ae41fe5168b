"""`majordomo serve --workers 2`: two processes share the port, both serve and log."""

from __future__ import annotations

import signal
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from tests import support
from tests.test_tap import _Output, free_port


class WorkersTests(TestCase):
    """A supervisor, two workers, one port."""

    timeout = 120

    def test_two_workers_share_port_and_log(self) -> defer.Deferred[None]:
        """
        Requests on new connections are served by both workers (each logs its
        own request lines), every request gets its row, and SIGTERM to the
        supervisor stops both workers cleanly.
        """
        support.fresh_database()
        upstream = support.FakeProvider(
            support.Canned(chunks=[support.chat_completion("gpt-4o-mini-2024-07-18", 19, 10)])
        )
        upstream_port = support.listen(upstream)
        self.addCleanup(upstream_port.stopListening)
        port = free_port()
        env = support.test_env(
            MAJORDOMO_SERVER_PORT=str(port),
            MAJORDOMO_PROVIDERS_OPENAI_BASE_URL=f"http://127.0.0.1:{upstream_port.getHost().port}",
        )
        key = support.create_key(env, "workers")
        out = _Output()
        process = reactor.spawnProcess(
            out, support.MAJORDOMO_BIN, [support.MAJORDOMO_BIN, "serve", "--workers", "2"], env=env
        )

        def stop() -> defer.Deferred[Any]:
            if process.pid is not None:
                process.signalProcess(signal.SIGTERM)
            return out.ended

        self.addCleanup(lambda: None if out.ended.called else stop())

        async def go() -> None:
            text = lambda: out.output.decode()  # noqa: E731
            await support.wait_for(lambda: text().count("Pricing data loaded") == 2, timeout=60)
            self.assertIn("[worker 1] Starting Majordomo Gateway", text())
            self.assertIn("[worker 2] Starting Majordomo Gateway", text())
            for _ in range(60):
                response = await treq.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    b'{"model": "gpt-4o-mini", "messages": []}',
                    headers={"X-Majordomo-Key": [key], "Content-Type": ["application/json"]},
                    persistent=False,
                )
                await response.content()
                self.assertEqual(response.code, 200)
            lines = [line for line in text().splitlines() if "/v1/chat/completions 200" in line]
            served = {line.split("]")[0] for line in lines}
            self.assertEqual(served, {"[worker 1", "[worker 2"})
            await support.wait_for(
                lambda: support.run_sql("SELECT count(*) FROM llm_requests") == [(60,)], timeout=30
            )
            code = await stop()
            self.assertEqual(code, 0)  # the supervisor exits after both workers have

        return support.as_deferred(go())
