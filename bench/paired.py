"""
The two ratio targets of issue #7 measured in alternation (part of
bench/run.py, `make bench`).

One wrk run per target and concurrency puts a slow minute of this shared VM
on one side of a ratio only; between `make bench` runs the pass-through alone
moved from 816 to 1,193 req/s at concurrency 16.  Here the bare pass-through
and the gateway run side by side, both pinned to the same CPU (the idle one
costs nothing), and take turns under the same wrk load: ROUNDS rounds of
concurrency 16 (throughput) and concurrency 1 (p50 latency).  The targets
table judges the median round.
"""

from __future__ import annotations

import statistics
from typing import Any

ROUNDS = 3


def measure(bench: Any, passthrough: Any, gateway: Any) -> int:
    """Runs the rounds into C{bench.results["paired"]}; returns the gateway's answered requests."""
    rounds, answered = [], 0
    for number in range(1, ROUNDS + 1):
        entry: dict[str, Any] = {"round": number}
        for connections in (16, 1):
            p = bench.wrk(passthrough.port, connections, bench.args.seconds, passthrough)
            g = bench.wrk(gateway.port, connections, bench.args.seconds, gateway)
            answered += g["requests"]
            entry[f"c{connections}"] = {"passthrough": p, "gateway": g}
        c16, c1 = entry["c16"], entry["c1"]
        entry["ratio_c16"] = c16["gateway"]["rps"] / c16["passthrough"]["rps"]
        entry["added_p50_c1_ms"] = (c1["gateway"]["p50_us"] - c1["passthrough"]["p50_us"]) / 1000
        bench.log(
            f"paired round {number}: c=16 {c16['gateway']['rps']:,.0f} vs "
            f"{c16['passthrough']['rps']:,.0f} req/s ({entry['ratio_c16']:.0%}), "
            f"c=1 p50 {entry['added_p50_c1_ms']:+.2f} ms"
        )
        rounds.append(entry)
    bench.results["paired"] = {
        "rounds": rounds,
        "ratio_c16": statistics.median(r["ratio_c16"] for r in rounds),
        "added_p50_c1_ms": statistics.median(r["added_p50_c1_ms"] for r in rounds),
    }
    return answered


def table(paired: dict[str, Any]) -> list[str]:
    """The rounds as markdown, with the medians the targets use."""
    out = [
        "| round | pass-through c=16 req/s | gateway c=16 req/s | ratio "
        "| pass-through c=1 p50 ms | gateway c=1 p50 ms | added |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in paired["rounds"]:
        c16, c1 = r["c16"], r["c1"]
        out.append(
            f"| {r['round']} | {c16['passthrough']['rps']:,.0f} | {c16['gateway']['rps']:,.0f} "
            f"| {r['ratio_c16']:.0%} | {c1['passthrough']['p50_us'] / 1000:.2f} "
            f"| {c1['gateway']['p50_us'] / 1000:.2f} | {r['added_p50_c1_ms']:+.2f} ms |"
        )
    ratio, added = paired["ratio_c16"], paired["added_p50_c1_ms"]
    out.append(f"| median | | | **{ratio:.0%}** | | | **{added:+.2f} ms** |")
    return out


def alternating(
    bench: Any, gateway: Any, name: str, label: str, rounds: int, **wrk_options: Any
) -> tuple[dict[str, Any], int, int]:
    """
    C{rounds} rounds on one gateway of a plain run against a C{name} run
    (wrk with C{wrk_options}: the key or provider key that makes it one), at
    concurrency 16 and 1, each a quarter of the phases' run length, the order
    swapped every round (this VM favours the second run of a pair by ~8%).
    Returns the results (rounds and medians: C{ratio_c16}, C{cpu_ratio_c16},
    C{added_p50_c1_ms}) and the plain and C{name} runs' answered requests.
    """
    entries, plain_answered, other_answered = [], 0, 0
    seconds = max(2.0, bench.args.seconds / 4)
    for number in range(1, rounds + 1):
        entry: dict[str, Any] = {"round": number}
        for connections in (16, 1):
            runs = {}
            for which in ("plain", name) if number % 2 else (name, "plain"):
                options = wrk_options if which == name else {}
                runs[which] = bench.wrk(gateway.port, connections, seconds, gateway, **options)
            plain_answered += runs["plain"]["requests"]
            other_answered += runs[name]["requests"]
            entry[f"c{connections}"] = runs
        c16, c1 = entry["c16"], entry["c1"]
        entry["ratio_c16"] = c16[name]["rps"] / c16["plain"]["rps"]
        entry["cpu_ratio_c16"] = c16[name]["cpu_ms_per_req"] / c16["plain"]["cpu_ms_per_req"]
        entry["added_p50_c1_ms"] = (c1[name]["p50_us"] - c1["plain"]["p50_us"]) / 1000
        bench.log(
            f"{label} round {number}: c=16 {c16[name]['rps']:,.0f} vs "
            f"{c16['plain']['rps']:,.0f} req/s ({entry['ratio_c16']:.0%}), "
            f"c=1 p50 {entry['added_p50_c1_ms']:+.3f} ms"
        )
        entries.append(entry)
    results = {
        "rounds": entries,
        "ratio_c16": statistics.median(r["ratio_c16"] for r in entries),
        "cpu_ratio_c16": statistics.median(r["cpu_ratio_c16"] for r in entries),
        "added_p50_c1_ms": statistics.median(r["added_p50_c1_ms"] for r in entries),
    }
    return results, plain_answered, other_answered
