"""
Issue #15's overhead target measured in alternation (part of bench/run.py,
`make bench`): what sending a proxy key in the provider credential header
costs over sending the provider's own key, through the same gateway process.

The phase has a gateway of its own, started with
MAJORDOMO_SECRETS_ENCRYPTION_KEY (a fresh random key; the other phases'
gateways run without one, as before).  A proxy key of the bench's Majordomo
key is made with the real `majordomo proxy-keys create`, and the fake
provider keys bench/load.lua sends on the plain side are stored as its
openai and anthropic keys with `majordomo proxy-keys set-provider`, the key
on stdin.  Then, as in bench/policy_overhead.py, the plain provider keys
and the proxy key (BENCH_PROVIDER_KEY: both Authorization: Bearer and
x-api-key) take turns under the same wrk load: ROUNDS rounds of
concurrency 16 and concurrency 1, each run a quarter as long as the other
phases', the order swapped every round; the targets table judges the
median round.

Afterwards the phase proves every proxy key request was swapped and
answered: a row with the proxy key's id for every answered request, each
with status 200 and the hash of the real provider key (never the proxy
key's).  Otherwise it fails: a refused request would be measured as a fast one.
"""

from __future__ import annotations

import re
import secrets
import shlex
import subprocess
from typing import Any

import harness
import paired

from majordomo.db.keys import hash_key

ROUNDS = 10
PROXY_KEY_NAME = "bench-proxy"
# The provider keys bench/load.lua sends when BENCH_PROVIDER_KEY is unset:
# stored behind the proxy key, so both sides reach the upstream with the same ones.
PROVIDER_KEYS = {"openai": "sk-bench-provider-key", "anthropic": "sk-ant-bench"}


def gateway_env() -> dict[str, str]:
    """The phase gateway's extra environment: a fresh encryption key (64 hex)."""
    return {"MAJORDOMO_SECRETS_ENCRYPTION_KEY": secrets.token_hex(32)}


def proxy_key(bench: Any, env: dict[str, str]) -> tuple[str, str]:
    """
    A proxy key of the bench key holding PROVIDER_KEYS, made with the real
    CLI under C{env} (the gateway's encryption key); returns (plaintext, id).
    """
    rows = harness.sql("SELECT id::text FROM api_keys WHERE name = 'bench'")
    assert len(rows) == 1, rows
    api_key_id = str(rows[0][0])
    create = [
        f"{harness.BIN}/majordomo",
        "proxy-keys",
        "create",
        "--name",
        PROXY_KEY_NAME,
        "--majordomo-key-id",
        api_key_id,
    ]
    out = subprocess.run(create, env=env, check=True, capture_output=True, text=True).stdout
    key, proxy_key_id = re.search(r"Key:\s+(mdm_pk_\S+)", out), re.search(r"ID:\s+(\S+)", out)
    assert key and proxy_key_id, "no proxy key in `proxy-keys create`'s output"
    bench.note_command(shlex.join(create).replace(api_key_id, "$KEY_ID"))
    for provider, secret in PROVIDER_KEYS.items():
        command = [
            f"{harness.BIN}/majordomo",
            "proxy-keys",
            "set-provider",
            proxy_key_id.group(1),
            "--provider",
            provider,
        ]
        subprocess.run(command, env=env, input=secret + "\n", text=True, check=True,
                       capture_output=True)  # fmt: skip
        shown = shlex.join(command).replace(proxy_key_id.group(1), "$PROXY_KEY_ID")
        bench.note_command(f"{shown} < {provider}-key.txt")
    return key.group(1), proxy_key_id.group(1)


def measure(bench: Any) -> int:
    """
    Starts the phase's gateway, runs the rounds into
    C{bench.results["proxy"]}, stops it; returns the gateway's answered
    requests (both sides, the warm-up included).
    """
    extra = gateway_env()
    key, proxy_key_id = proxy_key(bench, {**bench.env, **extra})
    gateway = bench.gateway("gateway-proxy", bench.target_cpus, **extra)
    try:
        return _rounds(bench, gateway, key, proxy_key_id)
    finally:
        gateway.stop()


def _rounds(bench: Any, gateway: Any, key: str, proxy_key_id: str) -> int:
    url = f"http://127.0.0.1:{gateway.port}"
    # The proxy key's first lookup (and decryption) happens here, not in round 1.
    warm = harness.wrk(url, 16, bench.args.warmup, bench.key, bench.load_cpus, key)
    proxy_answered = warm["requests"]
    answered = harness.wrk(url, 16, bench.args.warmup, bench.key, bench.load_cpus)["requests"]
    results, plain, measured = paired.alternating(
        bench, gateway, "proxy", "proxy key", ROUNDS, provider_key=key
    )
    answered += plain
    proxy_answered += measured
    bench.results["proxy"] = {
        **results,
        "rows": check_swapped(bench, proxy_key_id, proxy_answered),
    }
    return answered + proxy_answered


def check_swapped(bench: Any, proxy_key_id: str, answered: int) -> int:
    """
    That the proxy key's C{answered} requests all have rows with status 200
    and the real provider key's hash; raises if not.  Returns the rows.
    """
    where = f"proxy_key_id = '{proxy_key_id}'"
    rows = harness.wait_rows(answered, where)
    real = ", ".join(f"'{hash_key(secret)}'" for secret in PROVIDER_KEYS.values())
    wrong = harness.sql(
        f"SELECT status_code, error_message, provider_api_key_hash IN ({real}), count(*) "
        f"FROM llm_requests WHERE {where} AND (status_code IS DISTINCT FROM 200 "
        f"OR provider_api_key_hash IS NULL OR provider_api_key_hash NOT IN ({real})) "
        "GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 5"
    )
    if rows < answered or wrong:
        raise RuntimeError(
            f"proxy key: {rows:,} rows for {answered:,} answered requests; not 200 or "
            f"not the real provider key's hash (status, error, real hash, count): {wrong}"
        )
    bench.log(f"proxy key: {rows:,} rows, all 200, each with the real provider key's hash")
    return rows


def table(proxy: dict[str, Any]) -> list[str]:
    """The rounds as markdown, with the medians the targets use, and the rows check."""
    out = [
        "| round | first | provider key c=16 req/s | proxy key c=16 req/s | ratio "
        "| CPU per request, proxy / provider | provider key c=1 p50 ms "
        "| proxy key c=1 p50 ms | added |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in proxy["rounds"]:
        c16, c1 = r["c16"], r["c1"]
        first = "provider" if r["round"] % 2 else "proxy"
        out.append(
            f"| {r['round']} | {first} | {c16['plain']['rps']:,.0f} | {c16['proxy']['rps']:,.0f} "
            f"| {r['ratio_c16']:.1%} | {r['cpu_ratio_c16']:.1%} "
            f"| {c1['plain']['p50_us'] / 1000:.3f} "
            f"| {c1['proxy']['p50_us'] / 1000:.3f} | {r['added_p50_c1_ms']:+.3f} ms |"
        )
    ratio, added = proxy["ratio_c16"], proxy["added_p50_c1_ms"]
    out.append(
        f"| median | | | | **{ratio:.1%}** | {proxy['cpu_ratio_c16']:.1%} | | "
        f"| **{added:+.3f} ms** |"
    )
    out += [
        "",
        f"The proxy key's {proxy['rows']:,} rows all have status 200 and the hash of the "
        "real provider key swapped in, never the proxy key's.",
    ]
    return out


def targets(proxy: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue #15's target, judged on the median of the alternating rounds."""
    of = f"median of {len(proxy['rounds'])} alternating rounds"
    return [
        (
            "proxy key added p50 at c=1 (target <= 0.05 ms)",
            f"{proxy['added_p50_c1_ms']:+.3f} ms over the provider's own key ({of})",
            proxy["added_p50_c1_ms"] <= 0.05,
        )
    ]
