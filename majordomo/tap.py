# -*- test-case-name: tests.test_tap -*-
"""C{twistd majordomo}: command-line options and the service they build."""

from __future__ import annotations

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
        # A bad configuration stops startup here, with one line naming the key.
        try:
            self["loaded"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(f"configuration error: {e}") from None


def makeService(options: Options, reactor: Any = None) -> IService:
    """Build the gateway service from parsed options."""
    from majordomo.service import GatewayService

    return GatewayService(options["loaded"], reactor=reactor)
