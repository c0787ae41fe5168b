# -*- test-case-name: tests.test_bodies -*-
"""
The order parked bodies are uploaded again in (step 4 of
L{majordomo.bodies.s3}): rounds over the files on disk, oldest first, where a
file that fails goes to the back so one bad body cannot block the rest.
"""

from __future__ import annotations

from collections import deque


class ParkedRounds:
    """The parked files waiting for S3, the round being tried and the files uploading now."""

    def __init__(self) -> None:
        self._files: dict[str, None] = {}  # parked files, in retry order
        self._round: deque[str] = deque()  # parked files to try in this round
        self._uploading: set[str] = set()

    def __len__(self) -> int:
        """Parked files not yet in S3 (uploading ones included)."""
        return len(self._files)

    @property
    def uploading(self) -> int:
        """Parked files being uploaded now."""
        return len(self._uploading)

    def add(self, path: str) -> None:
        """A body parked on disk: at the back of the retry order."""
        self._files[path] = None

    def start(self) -> bool:
        """Start a round over the files not uploading, unless one is on; C{True} if one started."""
        if self._round or not self._files:
            return False
        self._round.extend(p for p in self._files if p not in self._uploading)
        return True

    def end(self) -> None:
        """End this round (S3 is probably down): the rest wait for the next one."""
        self._round.clear()

    def take(self) -> str | None:
        """The next file of this round to upload (now uploading), or C{None} when it is done."""
        while self._round:
            path = self._round.popleft()
            if path in self._files and path not in self._uploading:
                self._uploading.add(path)
                return path
        return None

    def finished(self, path: str) -> None:
        """An upload of C{path} ended, whatever its outcome."""
        self._uploading.discard(path)

    def remove(self, path: str) -> None:
        """C{path} is in S3 now, or lost: it is no longer waiting."""
        self._files.pop(path, None)

    def to_back(self, path: str) -> None:
        """C{path} failed: it is tried again after every other file."""
        self._files.pop(path, None)
        self._files[path] = None
