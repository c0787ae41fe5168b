# -*- test-case-name: tests.test_cli -*-
"""
C{majordomo serve}: run the gateway in the foreground, handing over to twistd
(or supervising several twistd processes sharing the port, with C{--workers}).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from majordomo.cli.options import CommandOptions


class ServeOptions(CommandOptions):
    synopsis = "[--config PATH] [--workers N] [--log-format text|json]"
    longdesc = "Run the gateway in the foreground (same as twistd -n majordomo)."
    optParameters = CommandOptions.optParameters + [
        ["workers", "w", 1, "Gateway processes sharing the port (SO_REUSEPORT).", int],
        [
            "log-format",
            None,
            "text",
            "text (one plain line per event) or json (one object per line).",
        ],
    ]

    def postOptions(self) -> None:
        if self["workers"] < 1:
            raise usage.UsageError("--workers must be at least 1")
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")


def serve(config_path: str | None, options: Any) -> None:
    """Hand over to twistd in the foreground (or supervise several, with --workers)."""
    config_args = ["--config", config_path] if config_path else []
    if options["workers"] > 1:
        from majordomo.workers import run_workers

        worker = [sys.executable, "-m", "majordomo", "serve", "--log-format"]
        sys.exit(run_workers(options["workers"], worker + [options["log-format"], *config_args]))
    from twisted.scripts import twistd

    observer = "json_observer" if options["log-format"] == "json" else "console_observer"
    sys.argv = [
        "twistd",
        "--nodaemon",
        "--pidfile=",
        f"--logger=majordomo.logs.{observer}",
        "majordomo",
        *config_args,
    ]
    twistd.run()
