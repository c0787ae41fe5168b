# -*- test-case-name: tests.test_spool -*-
"""
The journal of request records not yet committed to PostgreSQL.

Each record is appended, as one JSON line, to the current segment file of
this process before its client sees the end of the response; a segment is
deleted once its batch is committed.  A process that dies (even by SIGKILL)
leaves its segments behind, and the next process to open the spool adopts and
replays them; replay is idempotent (C{ON CONFLICT (id) DO NOTHING}).

Layout: C{spool_dir/<owner>/<seq>.jsonl}, one owner directory per running
process, holding an exclusive C{flock} on its C{lock} file for as long as the
process lives.  Several gateway processes can share one spool directory: an
owner directory whose lock can be taken belongs to a dead process.

Appends are plain C{write(2)} calls (the kernel has the bytes once it
returns, so a crashed process loses nothing); there is no fsync on the
request path.  The next segment's file is opened in advance, with the
descriptor the sealed one gives back, so that a record is journaled even
while the process is out of file descriptors.  Reading segments back is
blocking and meant for a thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import uuid
from dataclasses import dataclass

from twisted.logger import Logger

log = Logger()

_SUFFIX = ".jsonl"


class SpoolError(Exception):
    """A record could not be journaled (disk full, unwritable, or spool over its limit)."""


@dataclass
class Segment:
    """One segment file and how many records it holds."""

    path: str
    records: int
    size: int


class Spool:
    """This process's journal segments, in a directory shared with other processes."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.size = 0  # bytes in segments not yet removed
        self._owner_dir = ""
        self._lock_fd = -1
        self._seq = 0
        self._fd = -1
        self._current: Segment | None = None
        # The next segment, opened in advance (-1 and "" when it could not be).
        self._spare_fd = -1
        self._spare_path = ""

    def open(self) -> list[Segment]:
        """
        Claim an owner directory, adopt the segments of dead processes (and
        of this directory's earlier runs), and return them, oldest first, for
        replay.  Raises L{SpoolError} if the directory cannot be used.
        """
        try:
            os.makedirs(self.directory, exist_ok=True)
            owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._owner_dir = os.path.join(self.directory, owner)
            os.makedirs(self._owner_dir)
            self._lock_fd = os.open(os.path.join(self._owner_dir, "lock"), os.O_CREAT | os.O_RDWR)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            adopted = self._adopt_orphans()
        except OSError as e:
            raise SpoolError(f"spool directory {self.directory} is not usable: {e}") from e
        self._prepare()
        return adopted

    def _adopt_orphans(self) -> list[Segment]:
        adopted: list[Segment] = []
        for name in sorted(os.listdir(self.directory)):
            other = os.path.join(self.directory, name)
            # ("bodies" holds body storage's parked uploads, which it manages itself.)
            if other != self._owner_dir and name != "bodies" and os.path.isdir(other):
                try:
                    self._adopt(other, adopted)
                except OSError as e:  # another process starting now got there first
                    log.info("Not adopting spool {dir}: {error}", dir=other, error=e)
        if adopted:
            log.info(
                "Replaying {records} journaled request records from {segments} spool segments",
                records=sum(s.records for s in adopted),
                segments=len(adopted),
            )
        return adopted

    def _adopt(self, other: str, adopted: list[Segment]) -> None:
        """Take over the segments of C{other} if its owner is dead (its lock is free)."""
        lock = os.open(os.path.join(other, "lock"), os.O_CREAT | os.O_RDWR)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # a live process owns it
            for segment_name in sorted(os.listdir(other)):
                path = os.path.join(other, segment_name)
                if not segment_name.endswith(_SUFFIX):
                    continue
                if os.path.getsize(path) == 0:
                    os.unlink(path)  # a segment opened in advance and never used
                else:
                    adopted.append(self._take(path))
            os.unlink(os.path.join(other, "lock"))
            os.rmdir(other)
        finally:
            os.close(lock)

    def _take(self, path: str) -> Segment:
        """Move an orphan segment into this owner directory."""
        target = self._next_path()
        os.rename(path, target)
        size = os.path.getsize(target)
        self.size += size
        with open(target, "rb") as f:
            records = sum(1 for _ in f)
        return Segment(target, records, size)

    def _next_path(self) -> str:
        self._seq += 1
        return os.path.join(self._owner_dir, f"{self._seq:012d}{_SUFFIX}")

    def _open_segment(self) -> tuple[int, str]:
        path = self._next_path()
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), path

    def _prepare(self) -> None:
        """Open the next segment now, if it is not open yet; failing is not an error yet."""
        if self._spare_fd >= 0:
            return
        try:
            self._spare_fd, self._spare_path = self._open_segment()
        except OSError as e:
            log.warn("Cannot open the next spool segment in advance: {error}", error=e)

    def append(self, line: bytes) -> None:
        """Journal one record (a JSON line ending in a newline)."""
        if self.size + len(line) > self.max_bytes:
            raise SpoolError(f"spool is full ({self.size} of {self.max_bytes} bytes)")
        try:
            if self._current is None:
                if self._spare_fd >= 0:
                    fd, path = self._spare_fd, self._spare_path
                    self._spare_fd, self._spare_path = -1, ""
                else:
                    fd, path = self._open_segment()
                self._fd, self._current = fd, Segment(path, 0, 0)
            written = os.write(self._fd, line)
        except OSError as e:
            raise SpoolError(f"cannot write to the spool: {e}") from e
        if written != len(line):
            raise SpoolError("short write to the spool (disk full?)")
        self._current.records += 1
        self._current.size += written
        self.size += written

    def seal(self) -> Segment | None:
        """
        Close the current segment (if any records went into it) and return
        it; its descriptor opens the next segment at once.
        """
        segment = self._close_current()
        self._prepare()
        return segment

    def _close_current(self) -> Segment | None:
        segment, self._current = self._current, None
        if segment is not None:
            os.close(self._fd)
            self._fd = -1
        return segment

    def remove(self, segment: Segment) -> None:
        """Forget a segment whose records are committed."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.path)
        self.size -= segment.size

    def writable(self) -> bool:
        """Whether a record could be journaled now (space left and the directory writable)."""
        return self.size < self.max_bytes and os.access(self._owner_dir, os.W_OK)

    def close(self) -> None:
        """Close files and release the owner directory (segments stay for the next run)."""
        self._close_current()
        if self._spare_fd >= 0:
            os.close(self._spare_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._spare_path)
            self._spare_fd, self._spare_path = -1, ""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def read_segment(segment: Segment) -> list[str]:
    """
    The records of a segment as JSON strings (blocking: call in a thread).
    A last line cut short by a crash mid-write is dropped: its response had
    not been completed.  A line that is not JSON is skipped and logged.
    """
    records = []
    with open(segment.path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                log.warn("Dropping a record cut short at the end of {path}", path=segment.path)
                break
            text = raw.decode("utf-8")
            try:
                json.loads(text)
            except ValueError:
                log.error("Skipping line {n} of {path}: not JSON", n=number, path=segment.path)
                continue
            records.append(text.rstrip("\n"))
    return records
