"""The journal of unwritten records: appends, segments, adoption after a crash."""

from __future__ import annotations

import fcntl
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from majordomo.spool import Spool, SpoolError, read_segment


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
