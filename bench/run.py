"""
`make bench`: the gateway end to end, measured back to back in one run.

1. Non-streaming throughput and latency with wrk (bench/load.lua, OpenAI and
   Anthropic requests alternating) at concurrency 1, 16 and 64 against:
   the fake upstream directly (bench/upstream.py); a bare Twisted+treq
   pass-through (bench/passthrough.py, the Python ceiling); the gateway
   logging to PostgreSQL; the gateway logging to PostgreSQL with S3 bodies
   (moto's server on loopback).  "Added" latency is the target's percentile
   minus the upstream's at the same concurrency.  Peak RSS and CPU time of
   the process under test are read from /proc.  Then the two ratio targets
   again, the pass-through and the gateway taking turns (bench/paired.py).
   Then the policy overhead (issue #14) on the same gateway: a second key
   with a budget, model rules and rate limits against the plain key, taking
   turns (bench/policy_overhead.py); none of its requests may be refused.
   Then the proxy key overhead (issue #15) on a gateway of its own started
   with an encryption key: a proxy key in the provider credential header
   against the provider's own key, taking turns (bench/proxy_overhead.py);
   every proxy key request must be answered with the real key swapped in.
2. Streams (bench/streams.py in its own process): 1,000 concurrent streams
   through one gateway process (a chunk every 50 ms): completion, stalls,
   rows, memory per open stream; then 500 streams of 100 chunks 20 ms apart
   started over 2 s, directly, through the pass-through and the gateway.
3. `majordomo serve --workers 2` against one worker at concurrency 16 and 64.
4. A soak: wrk at concurrency 16 for --soak seconds, gateway RSS every second.

Results are printed and written to docs/BENCHMARKS.md (a dated section).
Files: harness.py (processes, wrk), procfs.py (/proc), moto_s3.py (step 1's
S3 target), paired.py, policy_overhead.py and proxy_overhead.py (the
alternating rounds),
unpinned.py (steps 2-4), report.py (the markdown).

    make bench                      # about 10 minutes, 60 s soak
    make bench SOAK=600             # a 10-minute soak (about 19 minutes)
    make bench BENCH_ARGS=--quick   # tiny sizes, about 2 minutes
    .venv/bin/python bench/run.py [--seconds 10] [--soak 60] [--streams 1000]
                                  [--no-pin] [--quick] [--no-write]

With pinning (default), the process under test gets CPU 1 and everything
else (wrk, upstream, moto, this script) CPU 0 for the wrk measurements;
streams, workers and the soak run unpinned.  Needs wrk, the local PostgreSQL
(database `majordomo_bench` is recreated) and the test extras (moto).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import moto_s3  # noqa: E402
import paired  # noqa: E402
import policy_overhead  # noqa: E402
import procfs  # noqa: E402
import proxy_overhead  # noqa: E402
import report  # noqa: E402
import unpinned  # noqa: E402
from harness import BIN, PY, Proc, Sampler  # noqa: E402

CONCURRENCY = (1, 16, 64)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pin = not args.no_pin
        self.load_cpus = "0" if self.pin else None
        self.target_cpus = "1" if self.pin else None
        if self.pin:
            os.sched_setaffinity(0, {0})
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MAJORDOMO_")}
        self.env.update(
            MAJORDOMO_STORAGE_POSTGRES_HOST="127.0.0.1",
            MAJORDOMO_STORAGE_POSTGRES_DATABASE=harness.DATABASE,
            MAJORDOMO_PRICING_REMOTE_URL="",
            MAJORDOMO_STORAGE_SPOOL_DIR=os.path.join(harness.LOGS, "spool"),
        )
        self.commands: list[str] = []
        self.waited = 0.0  # seconds spent waiting for the machine to be quiet
        self.results: dict[str, Any] = {"throughput": {}, "notes": []}

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def note_command(self, command: str) -> None:
        command = command.replace(harness.ROOT + "/", "").replace(self.key, "$KEY")
        command = re.sub(r"(127\.0\.0\.1:|--port |-p )\d+", r"\1$PORT", command)
        if command not in self.commands:
            self.commands.append(command)

    def start(
        self,
        name: str,
        cmd: list[str],
        url: str,
        cpus: str | None,
        env: dict[str, str] | None = None,
        want: int = 1,
    ) -> Proc:
        proc = Proc(name, cmd, env or self.env, cpus)
        proc.wait_http(url, want=want)
        self.note_command(proc.command)
        return proc

    def gateway(self, name: str, cpus: str | None, workers: int = 1, **extra: str) -> Proc:
        port = harness.free_port()
        env = {**self.env, "MAJORDOMO_SERVER_PORT": str(port), **extra}
        cmd = [f"{BIN}/majordomo", "serve"] + (["--workers", str(workers)] if workers > 1 else [])
        proc = self.start(name, cmd, f"http://127.0.0.1:{port}/readyz", cpus, env, 3 * workers)
        proc.port = port
        if workers > 1:
            while len(proc.pids()) < workers + 1:
                time.sleep(0.1)
        return proc

    def wrk(
        self,
        port: int,
        connections: int,
        seconds: float,
        proc: Proc | None,
        key: str | None = None,
        provider_key: str | None = None,
    ) -> dict:
        """
        One measured wrk run (after wait_quiet) with C{key}, else the bench
        key, and C{provider_key} (a proxy key), else bench/load.lua's own.
        """
        url = f"http://127.0.0.1:{port}"
        self.waited += procfs.wait_quiet()
        sampler = Sampler(proc) if proc else None
        cpu = procfs.cpu_seconds(proc.pids()) if proc else 0.0
        core = procfs.cpu_busy(1)
        if sampler:
            sampler.start()
        r = harness.wrk(url, connections, seconds, key or self.key, self.load_cpus, provider_key)
        used = procfs.cpu_seconds(proc.pids()) - cpu if proc else 0.0
        # CPU 1 time not spent by the process under test (PostgreSQL, other users).
        r["other_on_cpu1"] = (procfs.cpu_busy(1) - core - used) / (r["duration_us"] / 1e6)
        if sampler:
            sampler.stop()
        r["peak_rss_kb"] = sampler.peak if sampler else 0
        r["connections"] = connections
        r["cpu_ms_per_req"] = used * 1000 / max(1, r["requests"])
        r["cpu_use"] = used / (r["duration_us"] / 1e6)
        self.note_command(r["command"].replace(str(port), "$PORT"))
        return r

    def throughput(self, name: str, port: int, proc: Proc) -> int:
        """wrk at each concurrency; returns how many requests were answered."""
        runs, answered = [], 0
        for c in CONCURRENCY:
            warm = harness.wrk(
                f"http://127.0.0.1:{port}", c, self.args.warmup, self.key, self.load_cpus
            )
            r = self.wrk(port, c, self.args.seconds, proc)
            answered += warm["requests"] + r["requests"]
            self.log(
                f"{name} c={c}: {r['rps']:,.0f} req/s p50 {r['p50_us']} us "
                f"p99 {r['p99_us']} us, RSS {r['peak_rss_kb']} KB"
            )
            runs.append(r)
        self.results["throughput"][name] = runs
        return answered

    def env_line(self, env: dict[str, str]) -> str:
        line = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
        return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:$PORT", line)

    def count(self, where: str = "true") -> int:
        return int(harness.sql(f"SELECT count(*) FROM llm_requests WHERE {where}")[0][0])

    def run(self) -> None:
        a, started = self.args, time.monotonic()
        version = harness.sql("SHOW server_version", database="postgres")[0][0]
        self.results["machine"] = procfs.machine(version.split()[0])
        self.key = harness.fresh_database(self.env)
        self.log(f"logs in {harness.LOGS}")
        up_port = harness.free_port()
        upstream = self.start(
            "upstream",
            [PY, "bench/upstream.py", "--port", str(up_port)],
            f"http://127.0.0.1:{up_port}/",
            self.load_cpus,
        )
        base = f"http://127.0.0.1:{up_port}"
        for provider in ("OPENAI", "ANTHROPIC", "GEMINI", "AZURE"):
            self.env[f"MAJORDOMO_PROVIDERS_{provider}_BASE_URL"] = base
        shown = {k: v for k, v in self.env.items() if k.startswith("MAJORDOMO_")}
        shown["MAJORDOMO_STORAGE_SPOOL_DIR"] = "$SPOOL"
        self.results["gateway_env"] = self.env_line(shown)
        try:
            self.measure(upstream, up_port, base)
        finally:
            upstream.stop()
        self.results["notes"].append(
            f"Before each measured wrk run the harness waited until processes outside the "
            f"benchmark used under 0.15 CPUs (at most 30 s; {self.waited:.0f} s in all); "
            f"'other load' is what they used during the run, in CPUs."
        )
        self.results.update(
            date=datetime.date.today().isoformat(),
            commands=self.commands,
            seconds=a.seconds,
            warmup=a.warmup,
            wall_minutes=(time.monotonic() - started) / 60,
            command=a.command,
            pinning=(
                "wrk measurements: process under test on CPU 1 (taskset -c 1); wrk, the "
                "upstream, moto and the harness on CPU 0; PostgreSQL unpinned. Streams, "
                "workers and soak: unpinned."
                if self.pin
                else "none (--no-pin)."
            ),
        )

    def measure(self, upstream: Proc, up_port: int, base: str) -> None:
        self.throughput("direct", up_port, upstream)

        pt_port = harness.free_port()
        passthrough = self.start(
            "passthrough",
            [PY, "bench/passthrough.py", "--port", str(pt_port), "--upstream", base],
            f"http://127.0.0.1:{pt_port}/",
            self.target_cpus,
        )
        passthrough.port = pt_port
        self.throughput("passthrough", pt_port, passthrough)

        before = self.count()
        gw = self.gateway("gateway", self.target_cpus)
        answered = self.throughput("gateway", gw.port, gw)
        answered += paired.measure(self, passthrough, gw)
        answered += policy_overhead.measure(self, gw)
        passthrough.stop()
        gw.stop()
        answered += proxy_overhead.measure(self)
        rows = harness.wait_rows(before + answered) - before
        bad = self.count("status_code <> 200")
        notes = [
            f"gateway (PostgreSQL) {rows:,} rows for {answered:,} answered requests "
            f"({bad} rows with a status other than 200)"
        ]

        notes.append(moto_s3.phase(self, bad))
        self.results["rows_note"] = "; ".join(notes) + "."
        if self.pin:
            other = max(
                r["other_on_cpu1"]
                for runs in self.results["throughput"].values()
                for r in runs
                if runs is not self.results["throughput"]["direct"]
            )
            self.results["notes"].append(
                f"CPU 1 time not used by the process under test during its wrk runs "
                f"(PostgreSQL, other users of the machine): at most {other:.0%}."
            )

        # Everything below runs unpinned.
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        procfs.set_affinity(upstream.pid, None)
        self.load_cpus = None
        unpinned.streams(self, up_port, base)
        unpinned.workers(self)
        unpinned.soak(self)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="wrk warm-up before each")
    parser.add_argument("--soak", type=float, default=60.0, help="soak length in seconds")
    parser.add_argument("--streams", type=int, default=1000, help="the big stream test")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to try the harness")
    parser.add_argument("--output", default=os.path.join(harness.ROOT, "docs", "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print, do not write the doc")
    args = parser.parse_args()
    command = shlex.join([PY, "bench/run.py", *sys.argv[1:]])
    args.command = os.environ.get("BENCH_COMMAND") or command
    if args.quick:
        args.seconds, args.warmup, args.soak, args.streams = 2.0, 1.0, 10.0, 100
    bench = Bench(args)
    bench.run()
    section = report.render(bench.results)
    print(section)
    with open(os.path.join(harness.LOGS, "results.json"), "w") as f:
        json.dump(bench.results, f, indent=1, default=str)
    if not args.no_write:
        report.write(args.output, section, bench.results["date"])
        print(f"written to {args.output}; raw results in {harness.LOGS}/results.json")


if __name__ == "__main__":
    main()
