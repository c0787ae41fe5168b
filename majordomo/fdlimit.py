# -*- test-case-name: tests.test_fd_exhaustion -*-
"""
File descriptors: every client connection and every upstream connection
takes one, and a process started with the usual soft limit of 1024 runs out
long before its CPU does.

At start the soft RLIMIT_NOFILE is raised to the hard limit
(L{raise_open_files_limit}); L{DescriptorWatch} counts the open ones on a
timer, so C{/readyz} can say 503 while the gateway is (nearly) out of them.
"""

from __future__ import annotations

import errno
import os
import resource
from typing import Any

from twisted.internet.task import LoopingCall

# Counted this often; a count is one listdir of /proc/self/fd.
WATCH_INTERVAL = 1.0


def raise_open_files_limit() -> str:
    """
    Raise the soft limit on open files to the hard limit; what the limit now
    is, as a line for the log.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return f"File descriptor limit: {soft}"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as e:
        return f"File descriptor limit: {soft} (could not raise it to {hard}: {e})"
    return f"File descriptor limit: {hard} (raised from {soft})"


def spare_needed(limit: int) -> int:
    """How many free descriptors make a gateway ready: 1/16 of the limit, at least 16."""
    return max(16, limit // 16)


def _count_open() -> int | None:
    """Open descriptors of this process; None where /proc cannot say."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            return resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # none left even to look
        return None


class DescriptorWatch:
    """Counts this process's open descriptors every L{WATCH_INTERVAL} seconds."""

    def __init__(self, clock: Any) -> None:
        self.open: int | None = None
        self.limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._loop = LoopingCall(self._count)
        self._loop.clock = clock

    def start(self) -> None:
        self.limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._loop.start(WATCH_INTERVAL)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _count(self) -> None:
        self.open = _count_open()

    def problem(self) -> str | None:
        """Why the gateway is out of descriptors, or None while enough are free."""
        if self.open is None or self.limit - self.open >= spare_needed(self.limit):
            return None
        return f"out of file descriptors ({self.open} of {self.limit} open)"
