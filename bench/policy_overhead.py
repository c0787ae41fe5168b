"""
Issue #14's overhead target measured in alternation (part of bench/run.py,
`make bench`): what a key with every kind of rule (a budget, model rules,
rate limits) costs over a key with none, through the same gateway process.

A second key is made with the real `majordomo keys create` and given a
policy with `majordomo keys policy set` whose limits the benchmark cannot
reach, so every request goes through each check (model rules, the budget's
reservation of an estimate, a request and a token allowance) and none is
refused.  Then, as in bench/paired.py, the plain key and the policy key take
turns under the same wrk load: ROUNDS rounds of concurrency 16 (throughput)
and concurrency 1 (p50 latency), each run a quarter as long as the other phases'
and the order swapped every round (plain first, then policy first), because
this shared VM's speed drifts by 10-30% from one run to the next (three
rounds in a fixed order gave ratios of 87% to 112% for the same code); the
targets table judges the median round.

Afterwards the phase proves the policy was in force and refused nothing: a
row for every answered request, every one with status 200, and a window in
policy_windows for the budget and both rate limits.  Otherwise it fails: a
refused request would be measured as a fast one.
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

import harness
import paired

ROUNDS = 10
KEY_NAME = "bench-policy"
# Every kind of rule, each far from what the load reaches: both models of
# bench/load.lua are allowed and priced (a budgeted key refuses unpriced
# ones), the month's budget covers millions of requests' estimates, and the
# rate limits are per calendar minute, far above a gateway's requests and
# tokens in one (the token limit is the most `--tpm` takes).
RULES = [
    "--budget",
    "1000000",
    "--period",
    "month",
    "--models",
    "gpt-4o*,claude-*",
    "--deny-models",
    "o1*",
    "--rpm",
    "100000000",
    "--tpm",
    "2000000000",
]
# The windows a request through that policy takes leases from.
WINDOW_KINDS = {"month", "rpm", "tpm"}


def policy_key(bench: Any) -> tuple[str, str]:
    """A key with RULES, made with the real CLI; returns (plaintext key, key id)."""
    key = harness.create_key(bench.env, KEY_NAME)
    bench.note_command(f"{harness.BIN}/majordomo keys create --name {KEY_NAME}")
    rows = harness.sql(f"SELECT id::text FROM api_keys WHERE name = '{KEY_NAME}'")
    assert len(rows) == 1, rows
    key_id = str(rows[0][0])
    command = [f"{harness.BIN}/majordomo", "keys", "policy", "set", key_id, *RULES]
    subprocess.run(command, env=bench.env, check=True, capture_output=True)
    bench.note_command(shlex.join(command).replace(key_id, "$POLICY_KEY_ID"))
    return key, key_id


def measure(bench: Any, gateway: Any) -> int:
    """
    Runs the rounds into C{bench.results["policy"]}; returns the gateway's
    answered requests (both keys, the warm-up included).
    """
    key, key_id = policy_key(bench)
    # The key's first lookup and its windows' first leases happen here, not in round 1.
    warm = harness.wrk(
        f"http://127.0.0.1:{gateway.port}", 16, bench.args.warmup, key, bench.load_cpus
    )
    policy_answered = warm["requests"]
    results, answered, measured = paired.alternating(
        bench, gateway, "policy", "policy", ROUNDS, key=key
    )
    policy_answered += measured
    checked = check_admitted(bench, key_id, policy_answered)
    bench.results["policy"] = {**results, "rules": " ".join(RULES), **checked}
    return answered + policy_answered


def check_admitted(bench: Any, key_id: str, answered: int) -> dict[str, Any]:
    """
    That the policy key's C{answered} requests all have rows with status 200
    and went through the budget and both rate limits; raises if not.
    Returns the rows, the budget's spent counter and the rows' SUM(total_cost).
    """
    where = f"majordomo_api_key_id = '{key_id}'"
    rows = harness.wait_rows(answered, where)
    refused = harness.sql(
        f"SELECT status_code, error_message, count(*) FROM llm_requests "
        f"WHERE {where} AND status_code IS DISTINCT FROM 200 "
        "GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5"
    )
    if rows < answered or refused:
        raise RuntimeError(
            f"policy key: {rows:,} rows for {answered:,} answered requests; "
            f"not 200 (status, error, count): {refused}"
        )
    kinds = {kind for (kind,) in harness.sql(f"SELECT kind FROM policy_windows WHERE {where}")}
    if missing := WINDOW_KINDS - kinds:
        raise RuntimeError(f"policy key: no {sorted(missing)} window in policy_windows")
    spent, cost = harness.sql(
        f"SELECT (SELECT sum(spent) FROM policy_windows WHERE {where} AND kind = 'month'), "
        f"(SELECT sum(total_cost) FROM llm_requests WHERE {where})"
    )[0]
    bench.log(
        f"policy key: {rows:,} rows, all 200; budget spent ${spent} (rows' SUM(total_cost) ${cost})"
    )
    return {"rows": rows, "spent": str(spent), "rows_cost": str(cost), "exact": spent == cost}


def table(policy: dict[str, Any]) -> list[str]:
    """The rounds as markdown, with the medians the targets use, and the rows check."""
    out = [
        "| round | first | plain key c=16 req/s | policy key c=16 req/s | ratio "
        "| CPU per request, policy / plain | plain key c=1 p50 ms | policy key c=1 p50 ms "
        "| added |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in policy["rounds"]:
        c16, c1 = r["c16"], r["c1"]
        first = "plain" if r["round"] % 2 else "policy"
        out.append(
            f"| {r['round']} | {first} | {c16['plain']['rps']:,.0f} | {c16['policy']['rps']:,.0f} "
            f"| {r['ratio_c16']:.1%} | {r['cpu_ratio_c16']:.1%} "
            f"| {c1['plain']['p50_us'] / 1000:.3f} "
            f"| {c1['policy']['p50_us'] / 1000:.3f} | {r['added_p50_c1_ms']:+.3f} ms |"
        )
    ratio, added = policy["ratio_c16"], policy["added_p50_c1_ms"]
    out.append(
        f"| median | | | | **{ratio:.1%}** | {policy['cpu_ratio_c16']:.1%} | | "
        f"| **{added:+.3f} ms** |"
    )
    same = "equal" if policy["exact"] else "**not equal**"
    out += [
        "",
        f"Policy key rules: `{policy['rules']}`. Its {policy['rows']:,} rows all have "
        f"status 200; the month's spent counter ${policy['spent']} and the rows' "
        f"SUM(total_cost) ${policy['rows_cost']} are {same}.",
    ]
    return out
