"""
What bench/run.py (`make bench`) reads from /proc: a process tree's RSS and
CPU time, a CPU's busy time, how much CPU processes outside the benchmark
used meanwhile (the machine may be shared), and the machine facts that go
into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """C{pid} and all its descendants (for `serve --workers N`)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return found


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


def cpu_busy(cpu: int) -> float:
    """Seconds CPU C{cpu} has spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = next(x for x in f if x.startswith(f"cpu{cpu} ")).split()[1:]
    ticks = [int(x) for x in fields]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK  # all but idle and iowait


def _busy_all() -> float:
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


def _postgres_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == "postgres":
                    pids.append(int(entry))
        except (OSError, ValueError):
            pass
    return pids


class Foreign:
    """
    CPU used by others while we measure: all CPUs' busy time minus this
    harness's processes (alive or reaped) and PostgreSQL's.  The machine may
    be shared; this says how much it was.
    """

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = cpu_seconds(tree(os.getpid())) + children.ru_utime + children.ru_stime
        return time.monotonic(), _busy_all(), ours + cpu_seconds(_postgres_pids())

    def cores(self) -> float:
        """Average CPUs used by others since construction."""
        (t0, busy0, ours0), (t1, busy1, ours1) = self.start, self._snapshot()
        return max(0.0, (busy1 - busy0) - (ours1 - ours0)) / max(1e-6, t1 - t0)


def wait_quiet(limit: float = 0.15, longest: float = 30.0) -> float:
    """Wait (up to C{longest} s) until others use under C{limit} CPUs; returns the wait."""
    started = time.monotonic()
    while time.monotonic() - started < longest:
        probe = Foreign()
        time.sleep(0.5)
        if probe.cores() < limit:
            break
    return time.monotonic() - started


def set_affinity(pid: int, cpus: set[int] | None) -> None:
    """Every thread of C{pid} on C{cpus} (None: all CPUs)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), cpus or set(range(os.cpu_count() or 1)))


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


def machine(postgres: str) -> dict[str, str]:
    with open("/proc/cpuinfo") as f:
        model = next((x.split(":", 1)[1].strip() for x in f if x.startswith("model name")), "?")
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1024 / 1024
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {
        "cpus": f"{os.cpu_count()} x {model}",
        "memory": f"{mem:.1f} GiB",
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "postgresql": postgres,
        "wrk": wrk_version[1] if len(wrk_version) > 1 else "?",
        "load average at start": load,
    }
