# -*- test-case-name: tests.test_tap -*-
"""C{twistd majordomo}: command-line options and the service they build."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from majordomo.config import ConfigError, load_config


class Options(usage.Options):
    """Options of C{twistd majordomo}; the configuration file says the rest."""

    synopsis = "[--config PATH]"
    optParameters = [
        [
            "config",
            "c",
            None,
            "Configuration file (default: ./majordomo.yaml, then /etc/majordomo/majordomo.yaml). "
            "MAJORDOMO_<SECTION>_<KEY> environment variables override it.",
        ],
    ]

    def postOptions(self) -> None:
        """
        A bad configuration stops startup here, with one line naming the key.
        Under twistd (our parent options) that line is all that is printed,
        and the exit status is 1: twistd would print its usage text before
        a L{usage.UsageError}, burying the line under options that are fine.
        """
        try:
            self["loaded"] = load_config(self["config"])
        except ConfigError as e:
            message = f"configuration error: {e}"
            if getattr(self, "parent", None) is None:
                raise usage.UsageError(message) from None
            sys.stderr.write(f"majordomo: {message}\n")
            raise SystemExit(1) from None


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the gateway service from parsed options."""
    from majordomo.service import GatewayService

    return GatewayService(options["loaded"], reactor=reactor)
