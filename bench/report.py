"""
Turns the results of bench/run.py (`make bench`) into the markdown section
appended to docs/BENCHMARKS.md: machine facts, exact commands, throughput and
added latency per target and concurrency, streams, memory, workers, soak, and
the issue's targets marked met or missed.  A second run on the same day
replaces that day's section instead of adding another.
"""

from __future__ import annotations

import os
import re
import statistics
from typing import Any

import paired
import policy_overhead
import proxy_overhead

NAMES = {
    "direct": "upstream directly",
    "passthrough": "bare Twisted+treq pass-through",
    "gateway": "gateway, PostgreSQL logging",
    "gateway_s3": "gateway, PostgreSQL logging + S3 bodies (moto)",
}


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def throughput_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| target | conc. | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| CPU ms/req | CPU use | peak RSS MB | errors | other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    direct = {r["connections"]: r for r in results["throughput"]["direct"]}
    for target, runs in results["throughput"].items():
        for r in runs:
            d = direct[r["connections"]]
            added = (
                ("—", "—")
                if target == "direct"
                else (_ms(r["p50_us"] - d["p50_us"]), _ms(r["p99_us"] - d["p99_us"]))
            )
            errors = ", ".join(f"{n} {kind}" for kind, n in r["errors"].items() if n) or "0"
            lines.append(
                f"| {NAMES[target]} | {r['connections']} | {r['rps']:,.0f} | {_ms(r['p50_us'])} "
                f"| {_ms(r['p99_us'])} | {added[0]} | {added[1]} | {r['cpu_ms_per_req']:.2f} "
                f"| {r['cpu_use']:.0%} | {r['peak_rss_kb'] / 1024:.1f} | {errors} "
                f"| {r['other_cores']:.2f} |"
            )
    return lines


def stream_row(name: str, s: dict[str, Any]) -> str:
    lat, gap, ttfc = s["latency_ms"], s["max_gap_ms"], s["ttfc_ms"]
    return (
        f"| {name} | {s['streams']} | {s['complete']} | {s['stall_free']} "
        f"| {lat['50']:.1f} / {lat['99']:.1f} / {lat['100']:.0f} "
        f"| {gap['50']:.0f} / {gap['100']:.0f} | {ttfc['50']:.1f} / {ttfc['99']:.0f} "
        f"| {s['max_sent_gap_ms']:.0f} | {s['wall_s']:.1f} | {s['other_cores']:.2f} |"
    )


STREAM_HEAD = [
    "| path | streams | complete | stall-free | chunk latency p50 / p99 / max ms "
    "| worst gap per stream, median / max ms | first chunk p50 / p99 ms "
    "| upstream's own worst gap ms | wall s | other load |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    t = results["throughput"]
    c16 = {name: next(r for r in runs if r["connections"] == 16) for name, runs in t.items()}
    c1 = {name: next(r for r in runs if r["connections"] == 1) for name, runs in t.items()}
    ratio = c16["gateway"]["rps"] / c16["passthrough"]["rps"]
    extra_p50 = (c1["gateway"]["p50_us"] - c1["passthrough"]["p50_us"]) / 1000
    median_of = ""
    if "paired" in results:  # judged on the median of the alternating rounds
        ratio = results["paired"]["ratio_c16"]
        extra_p50 = results["paired"]["added_p50_c1_ms"]
        median_of = f"median of {len(results['paired']['rounds'])} alternating rounds"
    policy = results.get("policy")
    w = results["workers"]
    scales = results["workers_scale"]["16"]
    scale = statistics.median(scales)
    big = results["streams_1000"]
    fast, fast_gw = results["streams_500"]["direct"], results["streams_500"]["gateway"]
    soak = results["soak"]
    policy_targets = []
    if policy is not None:  # issue #14, judged on the median of the alternating rounds
        of = f"median of {len(policy['rounds'])} alternating rounds"
        policy_targets = [
            (
                "policy key added p50 at c=1 (target <= 0.1 ms)",
                f"{policy['added_p50_c1_ms']:+.3f} ms over the plain key ({of})",
                policy["added_p50_c1_ms"] <= 0.1,
            ),
            (
                "policy key c=16 throughput vs plain key (target >= 95%)",
                f"{policy['ratio_c16']:.1%} ({of})",
                policy["ratio_c16"] >= 0.95,
            ),
        ]
    return [
        (
            "gateway throughput at concurrency 16 >= 90% of the bare pass-through",
            f"{ratio:.0%} ({median_of + '; ' if median_of else ''}first run "
            f"{c16['gateway']['rps']:,.0f} "
            f"vs {c16['passthrough']['rps']:,.0f} req/s)",
            ratio >= 0.9,
        ),
        (
            "added p50 at concurrency 1 within 0.3 ms of the pass-through's",
            f"{extra_p50:+.2f} ms over the pass-through" + (f" ({median_of})" if median_of else ""),
            extra_p50 <= 0.3,
        ),
        (
            "`--workers 2` >= 1.6x one worker at concurrency 16",
            f"{scale:.2f}x (median of {len(scales)} alternating rounds: "
            + ", ".join(f"{x:.2f}x" for x in scales)
            + f"; median rounds {w['2'][0]['rps']:,.0f} vs {w['1'][0]['rps']:,.0f} req/s)",
            scale >= 1.6,
        ),
        (
            f"{big['streams']} streams at {big['interval_ms']:g} ms: all complete, none stalls, "
            "all rows",
            f"{big['complete']} complete, {big['stall_free']} stall-free, {big['rows']} rows",
            big["complete"] == big["stall_free"] == big["rows"] == big["streams"],
        ),
        (
            f"{fast['streams']} streams at {fast['interval_ms']:g} ms: as many stall-free "
            "through the gateway as directly",
            f"gateway {fast_gw['stall_free']}, directly {fast['stall_free']} "
            f"(bare pass-through {results['streams_500']['passthrough']['stall_free']})",
            fast_gw["stall_free"] >= fast["stall_free"],
        ),
        (
            "under 50 KB memory per open stream",
            f"{big['kb_per_stream']:.1f} KB",
            big["kb_per_stream"] < 50,
        ),
        (
            f"RSS flat ±5% over the soak ({soak['seconds']} s)",
            f"largest deviation {soak['max_deviation']:+.1%} "
            f"of {soak['baseline_kb'] / 1024:.1f} MB",
            abs(soak["max_deviation"]) <= 0.05,
        ),
        *policy_targets,
        *(proxy_overhead.targets(results["proxy"]) if "proxy" in results else []),
    ]


def render(results: dict[str, Any]) -> str:
    m, date = results["machine"], results["date"]
    big, soak, w = results["streams_1000"], results["soak"], results["workers"]
    out = [f"<!-- make bench {date} -->", f"### Results {date}", ""]
    out += ["Machine: " + "; ".join(f"{k} {v}" for k, v in m.items()) + ".", ""]
    out += [
        f"Command: `{results['command']}` ({results['wall_minutes']:.1f} minutes). "
        f"Pinning: {results['pinning']}",
        "",
        "Commands the harness ran (key elided):",
        "",
    ]
    out += ["```"] + results["commands"] + ["```", ""]
    out += [
        "Every gateway ran with `MAJORDOMO_SERVER_PORT=$PORT "
        f"{results['gateway_env']}`; with S3 bodies also `{results['s3_env']}`.",
        "",
    ]
    out += [
        "#### Non-streaming throughput and latency (wrk, "
        f"{results['seconds']:g} s per point after a {results['warmup']:g} s warm-up)",
        "",
    ]
    out += throughput_table(results) + [""]
    out += [f"Rows: {results['rows_note']}", ""]
    if "paired" in results:
        out += [
            "#### The two ratio targets again: pass-through and gateway taking turns "
            f"(wrk, {results['seconds']:g} s each, both pinned to CPU 1)",
            "",
        ]
        out += paired.table(results["paired"]) + [""]
    if "policy" in results:
        out += [
            "#### Policy overhead (issue #14): a key with a budget, model rules and rate "
            f"limits against a key with none, taking turns on one gateway (wrk, "
            f"{results['seconds']:g} s each)",
            "",
        ]
        out += policy_overhead.table(results["policy"]) + [""]
    if "proxy" in results:
        out += [
            "#### Proxy key overhead (issue #15): a proxy key in the provider credential "
            "header against the provider's own key, taking turns on one gateway started "
            f"with an encryption key (wrk, {results['seconds']:g} s each)",
            "",
        ]
        out += proxy_overhead.table(results["proxy"]) + [""]
    out += [
        f"#### {big['streams']} concurrent streams through one gateway process "
        f"({big['chunks']} chunks, {big['interval_ms']:g} ms apart, started over "
        f"{big['ramp_s']:g} s)",
        "",
    ]
    out += STREAM_HEAD + [stream_row("gateway", big), ""]
    out += [
        f"Rows written: {big['rows']} of {big['streams']} ({big['rows_complete']} with "
        f"complete usage). Gateway RSS {big['rss_before_kb'] / 1024:.1f} MB before, "
        f"{big['rss_peak_kb'] / 1024:.1f} MB peak: **{big['kb_per_stream']:.1f} KB per open "
        f"stream**. Gateway CPU {big['cpu_s']:.1f} s for {big['chunks_received']:,} chunks "
        f"({big['cpu_s'] * 1e6 / max(1, big['chunks_received']):.0f} µs per chunk).",
        "",
    ]
    s500 = results["streams_500"]
    first = next(iter(s500.values()))
    out += [
        f"#### {first['streams']} streams, {first['chunks']} chunks "
        f"{first['interval_ms']:g} ms apart, started over {first['ramp_s']:g} s "
        f"(stall: a gap over {3 * first['interval_ms']:g} ms)",
        "",
    ]
    out += STREAM_HEAD + [stream_row(NAMES[k], v) for k, v in s500.items()] + [""]
    out += [
        "#### `--workers 2` against one worker (no pinning, same conditions; "
        "each side's median of the alternating rounds)",
        "",
    ]
    out += [
        "| workers | conc. | req/s | p50 ms | p99 ms | CPU use | peak RSS MB (all workers) "
        "| other load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, runs in w.items():
        out += [
            f"| {n} | {r['connections']} | {r['rps']:,.0f} | {_ms(r['p50_us'])} "
            f"| {_ms(r['p99_us'])} | {r['cpu_use']:.0%} | {r['peak_rss_kb'] / 1024:.1f} "
            f"| {r['other_cores']:.2f} |"
            for r in runs
        ]
    out += [
        "",
        "Two workers over one, round by round: "
        + "; ".join(
            f"concurrency {c}: " + ", ".join(f"{x:.2f}x" for x in ratios)
            for c, ratios in results["workers_scale"].items()
        )
        + ".",
    ]
    out += ["", f"#### Soak: {soak['seconds']} s of wrk at concurrency 16 against one gateway", ""]
    out += [
        f"{soak['rps']:,.0f} req/s, p99 {_ms(soak['p99_us'])} ms, {soak['errors']} errors, "
        f"other load {soak['other_cores']:.2f} CPUs. "
        f"RSS (MB) over time: "
        + ", ".join(f"{t:.0f} s: {kb / 1024:.1f}" for t, kb in soak["series"])
        + ". "
        f"Baseline (after {soak['warmup_s']:.0f} s): {soak['baseline_kb'] / 1024:.1f} MB; "
        f"largest deviation {soak['max_deviation']:+.1%}; last sample "
        f"{soak['end_change']:+.1%}.",
        "",
    ]
    issues = ["#7"] + ["#14"] * ("policy" in results) + ["#15"] * ("proxy" in results)
    issues_text = "issue #7" if len(issues) == 1 else "issues " + ", ".join(issues[:-1])
    issues_text += f" and {issues[-1]}" if len(issues) > 1 else ""
    out += [f"#### Targets from {issues_text}", "", "| target | measured | met? |", "|---|---|---|"]
    out += [
        f"| {name} | {value} | {'yes' if ok else '**no**'} |"
        for name, value, ok in targets(results)
    ]
    if results.get("notes"):
        out += [""] + results["notes"]
    return "\n".join(out) + f"\n<!-- /make bench {date} -->\n"


def write(path: str, section: str, date: str) -> None:
    """Replace this day's section in C{path}, or append it."""
    text = "# Benchmarks\n"
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    block = re.compile(
        rf"<!-- make bench {re.escape(date)} -->.*?<!-- /make bench {re.escape(date)} -->\n",
        re.S,
    )
    if block.search(text):
        text = block.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)
