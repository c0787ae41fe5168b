# -*- test-case-name: tests.test_bodies -*-
"""
What the S3 body store is tuned by (L{UploadTuning}), and the L{Body} it
holds in memory on its way to S3.
"""

from __future__ import annotations

from dataclasses import dataclass

from majordomo.bodies.document import Exchange

WARN_EVERY = 60.0  # seconds between two warnings about failing uploads


@dataclass(frozen=True)
class UploadTuning:
    """How hard to try, how much to hold, how long to wait (tests shorten the timings)."""

    attempts: int = 4  # quick attempts before a body is parked on disk
    backoff: float = 0.5  # seconds before the second attempt, doubling after each
    retry_interval: float = 30.0  # how often parked bodies are tried again
    memory_items: int = 1000  # bodies held in memory for upload; the rest wait on disk
    memory_bytes: int = 128 * 1024 * 1024
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    stop_timeout: float = 4.0  # for uploads in flight at stop, then as long for disk writes
    disk_bytes: int = 1024 * 1024 * 1024  # parked bodies on disk; the record spool needs room too


@dataclass(eq=False)
class Body:
    """A body held in memory on its way to S3."""

    key: str
    exchange: Exchange | None  # dropped once C{data} is built
    size: int  # what it counts against the memory budget
    data: bytes | None = None  # the object's bytes, built in an upload thread
    attempts: int = 0
    parked: bool = False  # a copy is on (or on its way to) the disk


def describe(error: BaseException | None) -> str:
    """An error in one short line for a warning (its type and the start of its message)."""
    return f"{type(error).__name__}: {str(error)[:300]}"
