"""The twistd plugin: discovered, its options parsed, and a real `twistd -n majordomo` run."""

from __future__ import annotations

import contextlib
import json
import signal
import socket

import treq
from twisted.application.service import IServiceMaker
from twisted.internet import defer, error, protocol, reactor
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from majordomo import tap
from tests import support


class PluginTests(SynchronousTestCase):
    """`twistd majordomo` exists and validates its configuration up front."""

    def test_plugin_discovered(self) -> None:
        """getPlugins finds a service maker named majordomo that provides IServiceMaker."""
        import twisted.plugins

        makers = [m for m in getPlugins(IServiceMaker, twisted.plugins) if m.tapname == "majordomo"]
        self.assertEqual(len(makers), 1)
        self.assertTrue(verifyObject(IServiceMaker, makers[0]))
        self.assertIs(makers[0].options, tap.Options)

    def test_config_option(self) -> None:
        """--config PATH is read, and a bad value stops parsing with the key's name."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("server:\n  port: 9001\n")
        options = tap.Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options["loaded"].server.port, 9001)
        with open(path, "w") as f:
            f.write("server:\n  port: -1\n")
        with self.assertRaises(usage.UsageError) as caught:
            tap.Options().parseOptions(["--config", path])
        self.assertIn("server.port: must be a port number", str(caught.exception))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Output(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: object) -> None:
        self.ended.callback(getattr(reason, "value").exitCode)  # noqa: B009


class _ProcessCase(TestCase):
    """Runs one real gateway process per test."""

    timeout = 60

    def _spawn(self, args: list[str], port: int) -> _Output:
        support.fresh_database()
        out = _Output()
        env = support.test_env(MAJORDOMO_SERVER_PORT=str(port))
        process = reactor.spawnProcess(out, args[0], args, env=env, path=None)

        def stop() -> defer.Deferred[int]:
            with contextlib.suppress(error.ProcessExitedAlready):
                process.signalProcess(signal.SIGTERM)
            return out.ended

        self.addCleanup(stop)
        return out

    async def _check(self, out: _Output, port: int) -> None:
        await support.wait_for(lambda: b"Pricing data loaded" in out.output, timeout=30)
        response = await treq.get(f"http://127.0.0.1:{port}/health", persistent=False)
        self.assertEqual((response.code, await treq.content(response)), (200, b"ok"))


class TwistdSmokeTests(_ProcessCase):
    """One real gateway process, started the way systemd and the guide start it."""

    def test_twistd_nodaemon(self) -> defer.Deferred[None]:
        """
        `twistd -n majordomo` starts, logs the guide's three lines, answers
        /health and stops on SIGTERM.
        """
        port = free_port()
        out = self._spawn([support.TWISTD_BIN, "--nodaemon", "--pidfile=", "majordomo"], port)

        async def go() -> None:
            await self._check(out, port)
            text = out.output.decode()
            self.assertIn(f"Starting Majordomo Gateway on 127.0.0.1:{port}", text)
            self.assertIn("Connected to PostgreSQL", text)
            self.assertRegex(text, r"Pricing data loaded \(\d+ models\)")

        return support.as_deferred(go())

    def test_serve_prints_guide_lines(self) -> defer.Deferred[None]:
        """`majordomo serve` prints exactly the three lines the guide's Step 5 shows."""
        port = free_port()
        out = self._spawn([support.MAJORDOMO_BIN, "serve"], port)

        async def go() -> None:
            await self._check(out, port)
            lines = out.output.decode().splitlines()
            self.assertEqual(lines[0], f"Starting Majordomo Gateway on 127.0.0.1:{port}")
            self.assertEqual(lines[1], "Connected to PostgreSQL")
            self.assertRegex(lines[2], r"^Pricing data loaded \(\d+ models\)$")

        return support.as_deferred(go())

    def test_port_in_use_exits_with_failure(self) -> defer.Deferred[None]:
        """
        A gateway that cannot listen says why and exits with status 1, both as
        `twistd majordomo` (what systemd runs, Restart=on-failure) and as
        `majordomo serve`, instead of running on without serving.
        """
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]

        async def go() -> None:
            for args in (
                [support.TWISTD_BIN, "--nodaemon", "--pidfile=", "majordomo"],
                [support.MAJORDOMO_BIN, "serve"],
            ):
                out = self._spawn(args, port)
                self.assertEqual(await out.ended, 1, out.output)
                self.assertIn(f"Cannot listen on 127.0.0.1:{port}", out.output.decode())

        return support.as_deferred(go())

    def test_serve_config_error(self) -> defer.Deferred[None]:
        """A bad config value stops `majordomo serve` with one line naming the key."""
        out = self._spawn([support.MAJORDOMO_BIN, "serve"], 99999)

        async def go() -> None:
            code = await out.ended
            self.assertEqual(code, 1)
            self.assertEqual(
                out.output.decode(),
                "majordomo: configuration error: server.port: "
                "must be a port number between 0 and 65535 (got 99999)\n",
            )

        return support.as_deferred(go())


class JsonLogTests(_ProcessCase):
    """`majordomo serve --log-format json`: one JSON object per line, for machines."""

    def test_json_lines(self) -> defer.Deferred[None]:
        """
        Every line is a JSON object with time, level and message, and a
        rejected key never appears in the log.
        """
        port = free_port()
        out = self._spawn([support.MAJORDOMO_BIN, "serve", "--log-format", "json"], port)

        async def go() -> None:
            await self._check(out, port)
            response = await treq.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                b"{}",
                headers={"X-Majordomo-Key": ["mdm_sk_secret_never_logged"]},
                persistent=False,
            )
            await response.content()
            await support.wait_for(lambda: b"401" in out.output or response.code == 401)
            lines = [json.loads(line) for line in out.output.decode().splitlines()]
            self.assertEqual(lines[0]["message"], f"Starting Majordomo Gateway on 127.0.0.1:{port}")
            for line in lines:
                self.assertEqual(
                    set(line) & {"time", "level", "message"}, {"time", "level", "message"}
                )
            self.assertNotIn("mdm_sk_secret_never_logged", out.output.decode())

        return support.as_deferred(go())
