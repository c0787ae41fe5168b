# -*- test-case-name: tests.test_keys -*-
"""Time-ordered UUIDs (version 7, RFC 9562) for request ids."""

from __future__ import annotations

import os
import time
import uuid


def uuid7(now: float | None = None) -> uuid.UUID:
    """
    A UUIDv7: 48 bits of Unix milliseconds, then random bits.  Rows inserted
    in arrival order land next to each other in the primary-key index.
    """
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis & 0xFFFF_FFFF_FFFF) << 80
    value |= int.from_bytes(os.urandom(10), "big") & ((1 << 80) - 1)
    value &= ~(0xF << 76)
    value |= 0x7 << 76  # version 7
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # RFC 4122 variant
    return uuid.UUID(int=value)
