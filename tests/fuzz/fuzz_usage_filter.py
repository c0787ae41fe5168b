"""
Fuzz target: L{majordomo.usage.openai.UsageChunkFilter}, which hides the
usage-only chunk the gateway asked for from a client that did not.

Properties: it never raises, and whatever the chunking, what it lets through
(every C{filter} result, then C{flush}) is the stream minus exactly the first
usage-only event, from its first field line to just past its blank line, as
L{majordomo.usage.sse.SSEParser} locates it in the whole stream; a stream without
one passes unchanged.

    .venv/bin/python tests/fuzz/fuzz_usage_filter.py -max_total_time=60
"""

from __future__ import annotations

import atheris

from tests.fuzz.harness import check, chunkings, main, parse_input

with atheris.instrument_imports(include=["majordomo"]):
    from majordomo.usage.openai import UsageChunkFilter, is_usage_chunk
    from majordomo.usage.sse import SSEParser


def without_usage_chunk(body: bytes) -> bytes:
    """C{body} minus its first usage-only event, if it has one."""
    for event in SSEParser().feed(body):
        if is_usage_chunk(event.data):
            return body[: event.start] + body[event.end :]
    return body


def test_one_input(data: bytes) -> None:
    given = parse_input(data)
    expected = without_usage_chunk(given.body)
    for how, chunks in chunkings(given.body, given.lengths):
        usage_filter = UsageChunkFilter()
        out = b"".join(usage_filter.filter(chunk) for chunk in chunks) + usage_filter.flush()
        check(out == expected, lambda how=how, out=out: f"{how}: {out!r} != {expected!r}")


if __name__ == "__main__":
    main(test_one_input, "usage_filter")
