"""
Fuzz target: L{majordomo.usage.sse.JSONArrayParser}, the splitter of the JSON array
Gemini streams when it is not asked for SSE.

Properties: it never raises; whatever the chunking, it gives the same
elements and ends C{closed} or C{broken} the same way; and a body that is one
JSON array (as C{json.loads} reads it) gives exactly that array's elements,
C{closed} and not C{broken}.

Option bit 0 caps elements at 64 characters instead of 8 MiB.

    .venv/bin/python tests/fuzz/fuzz_json_array.py -max_total_time=60
"""

from __future__ import annotations

import json
from typing import Any

import atheris

from tests.fuzz.harness import check, chunkings, main, parse_input

with atheris.instrument_imports(include=["majordomo"]):
    from majordomo.usage.sse import MAX_EVENT_SIZE, JSONArrayParser

SMALL_CAP = 64


def feed(chunks: list[bytes], cap: int) -> tuple[list[Any], JSONArrayParser]:
    parser = JSONArrayParser(max_element_size=cap)
    items: list[Any] = []
    for chunk in chunks:
        items += parser.feed(chunk)
    return items, parser


def as_array(body: bytes) -> list[Any] | None:
    """The body decoded as one JSON array, if it is one (UTF-8, nothing after it)."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, list) else None


def test_one_input(data: bytes) -> None:
    given = parse_input(data)
    cap = SMALL_CAP if given.options & 1 else MAX_EVENT_SIZE
    whole, reference = feed([given.body], cap)
    expected = as_array(given.body)
    if expected is not None and len(given.body) <= cap:
        check(
            repr(whole) == repr(expected) and reference.closed and not reference.broken,
            lambda: (
                f"gave {whole!r} (closed {reference.closed}, broken "
                f"{reference.broken}) for the array {expected!r}"
            ),
        )
    for how, chunks in chunkings(given.body, given.lengths):
        items, parser = feed(chunks, cap)
        check(
            repr(items) == repr(whole)
            and (parser.closed, parser.broken) == (reference.closed, reference.broken),
            lambda how=how, items=items, parser=parser: (
                f"{how}: {items!r} (closed "
                f"{parser.closed}, broken {parser.broken}) != {whole!r} (closed "
                f"{reference.closed}, broken {reference.broken})"
            ),
        )


if __name__ == "__main__":
    main(test_one_input, "json_array")
