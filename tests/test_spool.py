"""The journal of unwritten records: appends, segments, adoption after a crash."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

from majordomo.ledger.spool import Spool, SpoolError, read_segment


@contextlib.contextmanager
def out_of_descriptors() -> Iterator[None]:
    """
    Within the block the process has no file descriptor left: its soft
    limit is lowered to what it has open, plus a few taken on /dev/null.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
    taken = []
    try:
        with contextlib.suppress(OSError):
            while True:
                taken.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def line(n: int) -> bytes:
    return json.dumps({"id": n}).encode() + b"\n"


class SpoolTests(SynchronousTestCase):
    """One process's spool."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        self.spool = Spool(self.directory, max_bytes=10_000)
        self.assertEqual(self.spool.open(), [])
        self.addCleanup(self.spool.close)

    def test_segments(self) -> None:
        """Appended records land in a segment; sealing closes it; removing deletes it."""
        for n in range(3):
            self.spool.append(line(n))
        segment = self.spool.seal()
        assert segment is not None
        self.assertEqual(segment.records, 3)
        self.assertEqual(read_segment(segment), [json.dumps({"id": n}) for n in range(3)])
        self.assertEqual(self.spool.size, segment.size)
        self.assertIsNone(self.spool.seal())
        self.spool.remove(segment)
        self.assertFalse(os.path.exists(segment.path))
        self.assertEqual(self.spool.size, 0)

    def test_full(self) -> None:
        """Past max_bytes an append fails loudly and the spool says it is not writable."""
        self.spool.max_bytes = len(line(1)) * 2
        self.spool.append(line(1))
        self.spool.append(line(2))
        with self.assertRaises(SpoolError):
            self.spool.append(line(3))
        self.assertFalse(self.spool.writable())

    def test_out_of_descriptors(self) -> None:
        """
        With every file descriptor taken, a record still reaches a new
        segment: it was opened in advance when the last one was sealed.
        """
        self.spool.append(line(1))
        self.assertIsNotNone(self.spool.seal())
        with out_of_descriptors():
            self.assertRaises(OSError, os.open, os.devnull, os.O_RDONLY)
            self.spool.append(line(2))
            segment = self.spool.seal()
        assert segment is not None
        self.assertEqual(read_segment(segment), [json.dumps({"id": 2})])

    def test_spare_segment_not_replayed(self) -> None:
        """The segment opened in advance is left empty on disk; adoption removes it."""
        self.spool.append(line(1))
        self.spool.seal()
        owner = os.listdir(self.directory)
        self.assertEqual(len(owner), 1)
        files = sorted(os.listdir(os.path.join(self.directory, owner[0])))
        self.assertEqual(len([name for name in files if name.endswith(".jsonl")]), 2)
        crashed = Spool(self.directory, max_bytes=10_000)
        # A second spool adopts nothing from a live owner; once the first is
        # closed, it finds only the sealed segment (the spare was removed).
        self.assertEqual(crashed.open(), [])
        self.spool.close()
        later = Spool(self.directory, max_bytes=10_000)
        adopted = later.open()
        self.addCleanup(later.close)
        crashed.close()
        self.assertEqual([segment.records for segment in adopted], [1])

    def test_unusable_directory(self) -> None:
        """A spool directory that cannot be created is one clear error."""
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        with self.assertRaises(SpoolError) as caught:
            Spool(os.path.join(blocker, "spool"), 1000).open()
        self.assertIn("is not usable", str(caught.exception))


class AdoptionTests(SynchronousTestCase):
    """Segments a dead process left behind are replayed by the next one."""

    def test_dead_owner_adopted_live_owner_left_alone(self) -> None:
        """
        A crashed process's segments (its lock free) are adopted, oldest first,
        with a cut-short last record dropped; a live process's are not touched.
        """
        directory = self.mktemp()
        live = Spool(directory, 10_000)
        live.open()
        live.append(line(9))
        self.addCleanup(live.close)
        dead = Spool(directory, 10_000)
        dead.open()
        dead.append(line(1))
        dead.seal()
        dead.append(line(2))
        dead.append(b'{"id": 3, "cut sh')  # killed mid-write
        dead.close()  # (a SIGKILL releases the lock the same way)

        heir = Spool(directory, 10_000)
        adopted = heir.open()
        self.addCleanup(heir.close)
        self.assertEqual([s.records for s in adopted], [1, 2])
        self.assertEqual(
            [read_segment(s) for s in adopted], [[json.dumps({"id": 1})], [json.dumps({"id": 2})]]
        )
        owners = [d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d))]
        self.assertEqual(len(owners), 2)  # the live one and the heir; the dead one is gone
        with (
            open(os.path.join(live._owner_dir, "lock")) as lock,
            self.assertRaises(BlockingIOError),
        ):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
