"""
The phases of bench/run.py (`make bench`) that run unpinned:

- N concurrent streams (default 1,000) of 100 chunks 50 ms apart, started
  over 2 s, through one fresh gateway process: complete, stall-free, rows
  written, gateway RSS before and at peak (memory per open stream = the
  difference / N) and gateway CPU per chunk.
- 500 streams of 100 chunks 20 ms apart started over 2 s: directly against
  the upstream, through the bare pass-through, through the gateway.
- `majordomo serve --workers 2` against one worker, wrk at concurrency 16
  and 64, in alternating rounds (both unpinned: two workers need both CPUs).
- Soak: wrk at concurrency 16 for --soak seconds against a fresh gateway,
  RSS every second.  The first 10% (at least 5 s) is warm-up; the baseline is
  the median of the next five samples; "deviation" is relative to it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import harness
import procfs
from harness import PY, Sampler


def _settled_rss(proc: harness.Proc) -> int:
    samples = []
    for _ in range(5):
        samples.append(procfs.rss_kb(proc.pids()))
        time.sleep(0.2)
    return int(statistics.median(samples))


def streams(bench: Any, up_port: int, base: str) -> None:
    a = bench.args
    gw = bench.gateway("gateway-streams", None)
    # Warm-up: imports, connection pools and caches in place before the baseline.
    harness.streams(
        gw.port, bench.key, None, False, streams=20, chunks=10, interval_ms=10, ramp=0.2
    )
    time.sleep(1)
    rss_before = _settled_rss(gw)
    rows_before = bench.count()
    complete_before = bench.count("stream AND usage_status = 'complete' AND status_code = 200")
    cpu = procfs.cpu_seconds(gw.pids())
    sampler = Sampler(gw, 0.1)
    sampler.start()
    big = harness.streams(
        gw.port, bench.key, None, streams=a.streams, chunks=100, interval_ms=50, ramp=2
    )
    sampler.stop()
    big["cpu_s"] = procfs.cpu_seconds(gw.pids()) - cpu
    big["rows"] = harness.wait_rows(rows_before + a.streams) - rows_before
    big["rows_complete"] = (
        bench.count("stream AND usage_status = 'complete' AND status_code = 200") - complete_before
    )
    big.update(rss_before_kb=rss_before, rss_peak_kb=sampler.peak)
    big["kb_per_stream"] = (sampler.peak - rss_before) / a.streams
    bench.note_command(big["command"].replace(str(gw.port), "$PORT"))
    bench.results["streams_1000"] = big
    bench.log(
        f"{a.streams} streams: {big['complete']} complete, {big['stall_free']} stall-free, "
        f"{big['rows']} rows, {big['kb_per_stream']:.1f} KB/stream"
    )

    spec = dict(streams=min(500, a.streams), chunks=100, interval_ms=20, ramp=2)
    results = {"direct": harness.streams(up_port, bench.key, None, **spec)}
    pt_port = harness.free_port()
    passthrough = bench.start(
        "passthrough-streams",
        [PY, "bench/passthrough.py", "--port", str(pt_port), "--upstream", base],
        f"http://127.0.0.1:{pt_port}/",
        None,
    )
    # Warm-up as wide as the test, so that its heap has grown (and the first full
    # garbage collections have run) before, as the gateway's has in the test above.
    warm = {**spec, "chunks": 5, "interval_ms": 10, "ramp": 0.5}
    harness.streams(pt_port, bench.key, None, False, **warm)
    results["passthrough"] = harness.streams(pt_port, bench.key, None, **spec)
    passthrough.stop()
    results["gateway"] = harness.streams(gw.port, bench.key, None, **spec)
    gw.stop()
    for name, ports in (("direct", up_port), ("passthrough", pt_port), ("gateway", gw.port)):
        bench.note_command(results[name]["command"].replace(str(ports), "$PORT"))
        bench.log(
            f"{spec['streams']} streams at 20 ms, {name}: "
            f"{results[name]['stall_free']} stall-free of {results[name]['complete']}"
        )
    bench.results["streams_500"] = results


WORKER_ROUNDS = 3


def workers(bench: Any) -> None:
    """
    One worker and two side by side (the idle one costs nothing), taking
    turns under the same load WORKER_ROUNDS times at each concurrency, so that
    a slow minute of the machine does not fall on one side of the ratio only.
    "workers" keeps each side's median round; the target uses the median ratio.
    """
    gateways = {n: bench.gateway(f"gateway-workers-{n}", None, workers=n) for n in (1, 2)}
    for gw in gateways.values():
        for c in (16, 64):
            harness.wrk(f"http://127.0.0.1:{gw.port}", c, bench.args.warmup, bench.key, None)
    rounds: dict[int, list[dict[int, dict]]] = {16: [], 64: []}
    for number in range(1, WORKER_ROUNDS + 1):
        for c in (16, 64):
            pair = {n: bench.wrk(gw.port, c, bench.args.seconds, gw) for n, gw in gateways.items()}
            rounds[c].append(pair)
            bench.log(
                f"workers round {number} c={c}: {pair[1]['rps']:,.0f} vs {pair[2]['rps']:,.0f} "
                f"req/s ({pair[2]['rps'] / pair[1]['rps']:.2f}x)"
            )
    for gw in gateways.values():
        gw.stop()

    def median_run(runs: list[dict]) -> dict:
        return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]

    bench.results["workers"] = {
        str(n): [median_run([pair[n] for pair in rounds[c]]) for c in (16, 64)] for n in (1, 2)
    }
    bench.results["workers_scale"] = {
        str(c): [pair[2]["rps"] / pair[1]["rps"] for pair in rounds[c]] for c in (16, 64)
    }


def soak(bench: Any) -> None:
    a = bench.args
    gw = bench.gateway("gateway-soak", None)
    harness.wrk(f"http://127.0.0.1:{gw.port}", 16, a.warmup, bench.key, None)
    procfs.wait_quiet()
    sampler = Sampler(gw, 1.0)
    sampler.start()
    bench.log(f"soak: {a.soak:g} s")
    r = harness.wrk(f"http://127.0.0.1:{gw.port}", 16, a.soak, bench.key, None)
    samples = sampler.stop()
    gw.stop()
    warmup = max(5.0, a.soak * 0.1)
    after = [kb for t, kb in samples if t >= warmup] or [kb for _, kb in samples]
    baseline = statistics.median(after[:5])
    deviations = [(kb - baseline) / baseline for kb in after]
    step = max(1, len(samples) // 10)
    series = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    bench.results["soak"] = {
        "seconds": int(a.soak),
        "rps": r["rps"],
        "p99_us": r["p99_us"],
        "errors": sum(r["errors"].values()),
        "other_cores": r["other_cores"],
        "warmup_s": warmup,
        "baseline_kb": baseline,
        "max_deviation": max(deviations, key=abs),
        "end_change": deviations[-1],
        "series": series,
    }
    bench.log(
        f"soak: RSS baseline {baseline} KB, largest deviation "
        f"{bench.results['soak']['max_deviation']:+.1%}"
    )
