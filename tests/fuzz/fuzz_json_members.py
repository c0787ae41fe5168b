"""
Fuzz target: L{majordomo.usage.json_members.TopLevelMembers}, the reader of the
small top-level members of a non-streamed JSON answer.

Properties: it never raises; whatever the chunking, it keeps the same members
and ends C{closed} or C{broken} the same way (unless the body is too dense to
read, which depends on how its steps fall into chunks); and a body that is
one JSON object (as C{json.loads} reads it) ends C{closed}, not C{broken},
with exactly that object's members, each as C{json.loads} decodes it.

    .venv/bin/python tests/fuzz/fuzz_json_members.py -max_total_time=60
"""

from __future__ import annotations

import json
from typing import Any

import atheris

from tests.fuzz.harness import check, chunkings, main, parse_input

with atheris.instrument_imports(include=["majordomo"]):
    from majordomo.usage.json_members import TopLevelMembers


def feed(chunks: list[bytes]) -> TopLevelMembers:
    members = TopLevelMembers()
    for chunk in chunks:
        members.feed(chunk)
    return members


def as_object(body: bytes) -> dict[str, Any] | None:
    """The body decoded as one JSON object, if it is one (UTF-8, nothing after it)."""
    try:
        value = json.loads(body.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def outcome(members: TopLevelMembers) -> str:
    return repr((members.members, members.closed, members.broken))


def test_one_input(data: bytes) -> None:
    given = parse_input(data)
    reference = feed([given.body])
    expected = as_object(given.body)
    if expected is not None and not reference.too_dense:
        check(
            reference.closed and not reference.broken and repr(reference.members) == repr(expected),
            lambda: f"gave {outcome(reference)} for the object {expected!r}",
        )
    want = outcome(reference)
    for how, chunks in chunkings(given.body, given.lengths):
        members = feed(chunks)
        if members.too_dense or reference.too_dense:
            continue
        got = outcome(members)
        check(got == want, f"{how}: {got} != {want}")


if __name__ == "__main__":
    main(test_one_input, "json_members")
