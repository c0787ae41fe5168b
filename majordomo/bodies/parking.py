# -*- test-case-name: tests.test_bodies -*-
"""
Bodies waiting on local disk for S3 (step 3 of L{majordomo.bodies.s3}): one
file each under C{spool_dir/bodies/<owner>/}, holding the object's key and
its gzip bytes, written whole or not at all.

As in the record spool (L{majordomo.ledger.spool}), each process owns a directory
under an exclusive C{flock} and adopts those of dead processes when it
starts; a byte limit keeps parked bodies from crowding out request records.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import socket
import threading
import uuid

from twisted.logger import Logger

log = Logger()

_MAGIC = b"MAJORDOMO-BODY-1\n"
_SUFFIX = ".body"
_PARTIAL = ".tmp"


class CorruptParkedBody(Exception):
    """A file in the bodies directory is not one this module wrote."""


class ParkingFull(OSError):
    """Parking one more body would take the bodies directory past its byte limit."""


class ParkedBodies:
    """
    Bodies waiting on local disk for S3, one file each.  Every method blocks:
    call them from a thread, never from the reactor.
    """

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.size = 0  # bytes in parked files
        self._size_lock = threading.Lock()  # written by the disk thread, removed by upload threads
        self._owner_dir = ""
        self._owner_lock = -1
        self._shared_lock = -1
        self._seq = itertools.count(1)

    def open(self) -> list[str]:
        """Claim a directory of our own and adopt the bodies of dead processes; return them."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        # The record spool adopts every directory beside its own whose "lock"
        # it can take; a shared lock tells it this one is in use.
        self._shared_lock = os.open(
            os.path.join(self.directory, "lock"), os.O_CREAT | os.O_RDWR, 0o600
        )
        with contextlib.suppress(OSError):
            fcntl.flock(self._shared_lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._owner_dir = os.path.join(self.directory, owner)
        os.makedirs(self._owner_dir, mode=0o700)
        self._owner_lock = os.open(
            os.path.join(self._owner_dir, "lock"), os.O_CREAT | os.O_RDWR, 0o600
        )
        fcntl.flock(self._owner_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        found: list[str] = []
        for name in sorted(os.listdir(self.directory)):
            other = os.path.join(self.directory, name)
            if other != self._owner_dir and os.path.isdir(other):
                try:
                    found.extend(self._adopt(other))
                except OSError as e:  # another process starting now got there first
                    log.info("Not adopting parked bodies in {dir}: {error}", dir=other, error=e)
        return found

    def _adopt(self, other: str) -> list[str]:
        """Move the bodies of C{other} into our directory if its owner is dead."""
        lock = os.open(os.path.join(other, "lock"), os.O_CREAT | os.O_RDWR)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # a live process owns it
            adopted = []
            for name in sorted(os.listdir(other)):
                path = os.path.join(other, name)
                if name.endswith(_SUFFIX):
                    adopted.append(self._next_path())
                    os.rename(path, adopted[-1])
                    self._grow(os.path.getsize(adopted[-1]))
                elif name.endswith(_PARTIAL):
                    # Cut short by a crash; that body was still in memory and died with it.
                    log.warn("Removing a half-written parked body: {path}", path=path)
                    os.unlink(path)
            os.unlink(os.path.join(other, "lock"))
            os.rmdir(other)
            return adopted
        finally:
            os.close(lock)

    def _grow(self, size: int) -> None:
        with self._size_lock:
            self.size += size

    def _next_path(self) -> str:
        return os.path.join(self._owner_dir, f"{next(self._seq):012d}{_SUFFIX}")

    def write(self, key: str, data: bytes) -> str:
        """Keep one object's key and bytes on disk; return the file's path."""
        if self._owner_lock < 0:
            raise OSError(f"the bodies directory {self.directory} is not open")
        header = _MAGIC + key.encode("utf-8") + b"\n"
        if self.size + len(header) + len(data) > self.max_bytes:
            raise ParkingFull(f"{self.directory} holds {self.size} of {self.max_bytes} bytes")
        path = self._next_path()
        partial = path[: -len(_SUFFIX)] + _PARTIAL
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with open(fd, "wb") as f:
                f.write(header)
                f.write(data)
            os.rename(partial, path)  # whole or not at all
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        self._grow(len(header) + len(data))
        return path

    def read(self, path: str) -> tuple[str, bytes]:
        """The key and the bytes of a parked object."""
        with open(path, "rb") as f:
            raw = f.read()
        key, newline, data = raw[len(_MAGIC) :].partition(b"\n")
        if not raw.startswith(_MAGIC) or not newline or not key:
            os.rename(path, path + ".bad")  # kept for a human; never retried
            raise CorruptParkedBody(f"{path} is not a parked body (renamed to {path}.bad)")
        return key.decode("utf-8"), data

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            size = os.path.getsize(path)
            os.unlink(path)
            self._grow(-size)

    def close(self) -> None:
        """Release our directory (removed if empty; otherwise the next start adopts it)."""
        if self._owner_lock >= 0:
            with contextlib.suppress(OSError):
                if not any(n.endswith((_SUFFIX, _PARTIAL)) for n in os.listdir(self._owner_dir)):
                    os.unlink(os.path.join(self._owner_dir, "lock"))
                    os.rmdir(self._owner_dir)
        for fd in (self._owner_lock, self._shared_lock):
            if fd >= 0:
                os.close(fd)
        self._owner_lock = self._shared_lock = -1
