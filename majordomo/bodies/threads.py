# -*- test-case-name: tests.test_bodies -*-
"""
Thread pools of the S3 body store's own (never the reactor's, which also
resolves DNS), whose threads cannot keep the process alive and whose stop
never blocks the reactor on a thread stuck in I/O.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.python.threadpool import ThreadPool


class _DaemonThread(threading.Thread):
    """A pool thread that cannot keep the process alive (an upload stuck on a dead peer)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


def daemon_pool(size: int, name: str) -> ThreadPool:
    """A pool of at most C{size} daemon threads, made as they are needed."""
    pool = ThreadPool(minthreads=0, maxthreads=size, name=name)
    pool.threadFactory = _DaemonThread
    return pool


def stop_pool(pool: ThreadPool, busy: bool) -> None:
    """Stop a pool; if a thread is stuck in I/O, wait for it elsewhere, not in the reactor."""
    if busy:
        threading.Thread(target=pool.stop, name=f"{pool.name}-stop", daemon=True).start()
    else:
        pool.stop()
