"""
The fuzz targets of C{tests/fuzz/} (atheris, libFuzzer), each run for a
bounded time on its committed seeds: a target that raises, breaks its
property, spends more than the per-input time bound on one input or grows
past the memory bound fails its test, which quotes the input and the
traceback.  C{MAJORDOMO_FUZZ_SECONDS} sets the time per target (default 15).

Longer runs are for people: see C{tests/fuzz/README.md}.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from dataclasses import dataclass

from twisted.trial.unittest import SynchronousTestCase

from tests.fuzz import harness

SECONDS = int(os.environ.get("MAJORDOMO_FUZZ_SECONDS", "15"))
# Per input: generous, since the machine is shared; a freeze takes far longer.
TIMEOUT_SECONDS = 2
RSS_LIMIT_MB = 1024
ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


def targets() -> list[str]:
    """The names of the targets: C{sse} for C{tests/fuzz/fuzz_sse.py}."""
    paths = glob.glob(os.path.join(harness.HERE, "fuzz_*.py"))
    return sorted(os.path.basename(path)[len("fuzz_") : -len(".py")] for path in paths)


@dataclass(frozen=True)
class FuzzRun:
    """What one bounded run of a target left behind."""

    returncode: int
    log: str
    artifacts: dict[str, bytes]

    @property
    def runs(self) -> int:
        found = re.search(r"^Done (\d+) runs", self.log, re.M)
        return int(found.group(1)) if found else 0


def run_target(script: str, seeds: str, workdir: str, seconds: int = SECONDS) -> FuzzRun:
    """Fuzz with C{script} for C{seconds}, new inputs and findings kept in C{workdir}."""
    corpus = os.path.join(workdir, "corpus")
    os.makedirs(corpus)
    command = [
        sys.executable,
        script,
        f"-max_total_time={seconds}",
        f"-timeout={TIMEOUT_SECONDS}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={workdir}{os.sep}",
        corpus,
        seeds,
    ]
    done = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=seconds + 120,
        check=False,
    )
    artifacts = {}
    for name in sorted(os.listdir(workdir)):
        if name.startswith(ARTIFACTS):
            with open(os.path.join(workdir, name), "rb") as f:
                artifacts[name] = f.read()
    return FuzzRun(done.returncode, done.stdout.decode("utf-8", "replace"), artifacts)


def failure_report(run: FuzzRun) -> str | None:
    """Why C{run} failed, with each input it failed on and the traceback; None if it did not."""
    if run.returncode == 0 and not run.artifacts:
        return None
    lines = [f"the fuzzer exited with status {run.returncode}"]
    for name, data in run.artifacts.items():
        lines.append(f"{name}: {data[:2000]!r}")
    start = run.log.find("=== Uncaught Python exception")
    lines.append(run.log[start : start + 6000] if start >= 0 else run.log[-6000:])
    return "\n".join(lines)


class FuzzTargetTests(SynchronousTestCase):
    """Every fuzz target survives a bounded run."""

    def fuzz(self, target: str) -> None:
        seeds = harness.seeds_dir(target)
        script = os.path.join(harness.HERE, f"fuzz_{target}.py")
        run = run_target(script, seeds, self.mktemp_dir())
        report = failure_report(run)
        if report is not None:
            self.fail(f"fuzz_{target}.py: {report}")
        self.assertGreater(run.runs, len(os.listdir(seeds)), run.log[-3000:])

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path

    def test_every_target_has_a_test_and_seeds(self) -> None:
        """A new target is run here too, and starts from seeds."""
        self.assertEqual(
            targets(),
            sorted(
                name[len("test_fuzz_") :] for name in dir(self) if name.startswith("test_fuzz_")
            ),
        )
        for target in targets():
            self.assertTrue(os.listdir(harness.seeds_dir(target)), target)

    def test_fuzz_config(self) -> None:
        self.fuzz("config")

    def test_fuzz_json_array(self) -> None:
        self.fuzz("json_array")

    def test_fuzz_json_members(self) -> None:
        self.fuzz("json_members")

    def test_fuzz_metadata(self) -> None:
        self.fuzz("metadata")

    def test_fuzz_providers(self) -> None:
        self.fuzz("providers")

    def test_fuzz_sse(self) -> None:
        self.fuzz("sse")

    def test_fuzz_target(self) -> None:
        self.fuzz("target")

    def test_fuzz_usage(self) -> None:
        self.fuzz("usage")

    def test_fuzz_usage_filter(self) -> None:
        self.fuzz("usage_filter")


CRASHING_TARGET = """
from tests.fuzz.harness import check, main, parse_input

def test_one_input(data):
    check(parse_input(data).body != b"BOOM", "went boom")

main(test_one_input, "none")
"""


class HarnessTests(SynchronousTestCase):
    """The fuzz harness feeds what it claims to and reports what it finds."""

    def test_chunkings(self) -> None:
        """Every chunking gives the body back, and one splits every CRLF."""
        body = b"data: 1\r\n\r\ndata: 2\r\n\r\n"
        found = dict(harness.chunkings(body, bytes([2, 0])))
        self.assertEqual(
            sorted(found),
            ["cut after every CR", "cut at lengths [2, 0]", "one byte at a time", "whole"],
        )
        for chunks in found.values():
            self.assertEqual(b"".join(chunks), body)
        self.assertEqual(found["cut at lengths [2, 0]"][:3], [b"dat", b"a", b": 1"])
        self.assertTrue(
            all(chunk.endswith(b"\r") for chunk in found["cut after every CR"][:-1]),
        )

    def test_input_round_trip(self) -> None:
        """A seed made with make_input is cut back into its parts."""
        given = harness.parse_input(harness.make_input(b"body", 5, b"\x01\x02"))
        self.assertEqual(given, harness.FuzzInput(5, b"\x01\x02", b"body"))

    def test_crash_is_reported_with_its_input(self) -> None:
        """A target that breaks its property fails, naming the input and the traceback."""
        workdir = self.mktemp()
        seeds = os.path.join(workdir, "seeds")
        os.makedirs(seeds)
        with open(os.path.join(seeds, "boom"), "wb") as f:
            f.write(harness.make_input(b"BOOM"))
        script = os.path.join(workdir, "fuzz_boom.py")
        with open(script, "w") as f:
            f.write(CRASHING_TARGET)
        run = run_target(script, seeds, os.path.join(workdir, "run"), seconds=5)
        report = failure_report(run)
        self.assertIsNotNone(report)
        assert report is not None
        self.assertIn(repr(harness.make_input(b"BOOM")), report)
        self.assertIn("PropertyBroken: went boom", report)
