"""
What reading the usage of a large non-streamed JSON answer costs the reactor:
L{majordomo.usage.json_members.TopLevelMembers} fed in 64 KiB chunks (what one
socket read delivers) against C{json.loads} of the whole body, the reference,
timed in the same run.  For each body shape it prints the total time of both,
their ratio, and the slowest single chunk, which is the longest the reactor
waits on this work.

    .venv/bin/python bench/json_members.py [--mib 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import time
from collections.abc import Callable

from majordomo.usage.json_members import TopLevelMembers

CHUNK = 64 * 1024


def shapes(mib: int) -> dict[str, bytes]:
    """Real answer shapes and hostile ones, each about C{mib} MiB."""
    size = mib * 1024 * 1024
    rng = random.Random(7)
    vector = [round(rng.uniform(-1, 1), 8) for _ in range(1536)]
    embedding = {"object": "embedding", "index": 0, "embedding": vector}
    token = {
        "token": "a",
        "logprob": -0.1,
        "bytes": [97],
        "top_logprobs": [{"token": "b", "logprob": -2.0, "bytes": [98]}] * 5,
    }
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}

    def fill(unit: object, member: str) -> bytes:
        one = len(json.dumps(unit)) + 2
        document = {"model": "m", member: [unit] * (size // one), "usage": usage}
        return json.dumps(document).encode()

    return {
        "embeddings": fill(embedding, "data"),
        "logprobs": fill(token, "choices"),
        "long content": json.dumps(
            {
                "model": "m",
                "choices": [{"message": {"content": 'ab"c\n' * (size // 6)}}],
                "usage": usage,
            }
        ).encode(),
        "hostile: many members": b"{"
        + b"".join(b'"k%d": 1, ' % i for i in range(size // 12))
        + b'"usage": {}}',
        "hostile: deep nesting": b'{"a": ' + b"[1, " * (size // 8) + b"]" * (size // 8) + b"}",
        "hostile: cut containers": b'{"a": '
        + (b"[" + b"1," * 2000) * (size // 4001)
        + b"1"
        + b"]" * (size // 4001)
        + b', "usage": {}}',
        "hostile: small containers": b'{"a": [' + b"[], " * (size // 4) + b'[]], "usage": {}}',
    }


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def scan(body: bytes) -> tuple[float, float, TopLevelMembers]:
    """Total and slowest-chunk time of reading C{body} in 64 KiB chunks."""
    members = TopLevelMembers()
    total = slowest = 0.0
    for start in range(0, len(body), CHUNK):
        took = timed(lambda start=start: members.feed(body[start : start + CHUNK]))
        total += took
        slowest = max(slowest, took)
    return total, slowest, members


def loads(body: bytes) -> None:
    with contextlib.suppress(RecursionError):
        json.loads(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'body':24} {'MiB':>5} {'json.loads':>10} {'scan':>8} {'ratio':>6} "
        f"{'slowest chunk':>13}  outcome"
    )
    for name, body in shapes(args.mib).items():
        reference = min(timed(lambda body=body: loads(body)) for _ in range(args.repeat))
        runs = [scan(body) for _ in range(args.repeat)]
        total = min(run[0] for run in runs)
        slowest = max(run[1] for run in runs)
        members = runs[0][2]
        outcome = (
            "too dense: given up"
            if members.too_dense
            else ("usage read" if "usage" in members.members else "no usage")
        )
        print(
            f"{name:24} {len(body) / 2**20:5.1f} {reference:9.3f}s {total:7.3f}s "
            f"{total / reference:6.2f} {slowest * 1000:10.2f} ms  {outcome}"
        )


if __name__ == "__main__":
    main()
