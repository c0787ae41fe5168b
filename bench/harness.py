"""
Process plumbing for bench/run.py (`make bench`): start and stop the fake
upstream, the bare pass-through, moto's S3 server and gateway processes
(optionally pinned to CPUs with taskset), sample a process tree's RSS while
something runs, run wrk with bench/load.lua and bench/streams.py, and talk to
the `majordomo_bench` database.  /proc readings are in bench/procfs.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

import psycopg2
from procfs import Foreign, rss_kb, tree, wait_quiet

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
PY = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT) else sys.executable
DATABASE = "majordomo_bench"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
LOGS = tempfile.mkdtemp(prefix="majordomo-bench-")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sql(statement: str, database: str = DATABASE) -> list[tuple[Any, ...]]:
    connection = psycopg2.connect(dbname=database, **PG)  # type: ignore[arg-type]
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


class Proc:
    """A child process with its output in a log file; C{cpus} like taskset -c."""

    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None, cpus: str | None = None
    ) -> None:
        self.name, self.cmd = name, cmd
        self.log = os.path.join(LOGS, f"{name}.log")
        full = (["taskset", "-c", cpus] if cpus else []) + cmd
        self.command = shlex.join(full)
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                full, env=env or os.environ.copy(), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
            )
        self.pid = self.popen.pid  # taskset execs the command: same pid
        self.port = 0

    def pids(self) -> list[int]:
        return tree(self.pid)

    def wait_http(self, url: str, timeout: float = 30.0, want: int = 1) -> None:
        """Until C{url} answers (C{want} times in a row) or the process dies."""
        deadline, ok = time.monotonic() + timeout, 0
        while ok < want:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready at {url}; see {self.log}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    ok += response.status < 500
            except OSError as e:
                ok = 0 if not hasattr(e, "code") or e.code >= 500 else ok + 1  # type: ignore
                time.sleep(0.1)

    def stop(self, timeout: float = 60.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Sampler(threading.Thread):
    """RSS (KB) of a process tree every C{interval} s, with timestamps."""

    def __init__(self, proc: Proc, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.proc, self.interval = proc, interval
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append((time.monotonic() - self.started_at, rss_kb(self.proc.pids())))
            self.halt.wait(self.interval)

    def stop(self) -> list[tuple[float, int]]:
        self.halt.set()
        self.join()
        return self.samples

    @property
    def peak(self) -> int:
        return max((kb for _, kb in self.samples), default=0)


def wrk(
    url: str,
    connections: int,
    seconds: float,
    key: str,
    cpus: str | None,
    provider_key: str | None = None,
) -> dict:
    """
    One wrk run (bench/load.lua) with the Majordomo C{key} and, if given,
    C{provider_key} as both providers' credential; returns its BENCH_JSON
    plus req/s and the command.
    """
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        os.path.join("bench", "load.lua"),
        url,
    ]
    full = (["taskset", "-c", cpus] if cpus else []) + cmd
    foreign = Foreign()
    out = subprocess.run(
        full,
        env={**os.environ, "BENCH_KEY": key, "BENCH_PROVIDER_KEY": provider_key or ""},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
    result: dict[str, Any] = json.loads(line[len("BENCH_JSON ") :])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["other_cores"] = foreign.cores()
    given = "BENCH_PROVIDER_KEY=$PROXY_KEY " if provider_key else ""
    result["command"] = "BENCH_KEY=$KEY " + given + shlex.join(full)
    return result


def streams(port: int, key: str, cpus: str | None, quiet: bool = True, **options: Any) -> dict:
    """One bench/streams.py run (after wait_quiet, unless not C{quiet}): its STREAMS JSON."""
    cmd = [PY, os.path.join("bench", "streams.py"), "--port", str(port), "--key", key]
    for name, value in options.items():
        cmd += [f"--{name.replace('_', '-')}", str(value)]
    full = (["taskset", "-c", cpus] if cpus else []) + cmd
    if quiet:
        wait_quiet()
    foreign = Foreign()
    out = subprocess.run(full, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("STREAMS "))
    result: dict[str, Any] = json.loads(line[len("STREAMS ") :])
    result["other_cores"] = foreign.cores()
    result["command"] = shlex.join(full).replace(key, "$KEY")
    return result


def fresh_database(env: dict[str, str]) -> str:
    """Recreate `majordomo_bench` (db init), create a key; returns the key."""
    with contextlib.suppress(psycopg2.Error):  # in use by someone else: emptied below
        sql(f"DROP DATABASE IF EXISTS {DATABASE}", database="postgres")
    subprocess.run([f"{BIN}/majordomo", "db", "init"], env=env, check=True, capture_output=True)
    # key_policies references api_keys; CASCADE also empties any later table that does.
    sql(
        "TRUNCATE llm_requests, llm_requests_metadata_keys, policy_windows, key_policies, "
        "api_keys CASCADE"
    )
    return create_key(env)


def create_key(env: dict[str, str], name: str = "bench") -> str:
    """A key made with the real `majordomo keys create`; returns the plaintext key."""
    out = subprocess.run(
        [f"{BIN}/majordomo", "keys", "create", "--name", name],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"Key:\s+(\S+)", out)
    assert match, out
    return match.group(1)


def wait_rows(expected: int, where: str = "true", timeout: float = 60.0) -> int:
    """Rows matching C{where} once C{expected} are there or the count stops growing."""
    deadline, last, still = time.monotonic() + timeout, -1, 0
    while True:
        count = int(sql(f"SELECT count(*) FROM llm_requests WHERE {where}")[0][0])
        still = still + 1 if count == last else 0
        if count >= expected or still >= 10 or time.monotonic() > deadline:
            return count
        last = count
        time.sleep(0.5)
