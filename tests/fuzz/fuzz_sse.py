"""
Fuzz target: L{majordomo.usage.sse.SSEParser}, the server-sent event splitter.

Properties: it never raises; whatever the chunking, it gives the same events
(name, data, start offset) until it gives up on an oversized event; it gives
up on every body the whole-body parse gives up on (a chunk that ends inside
an oversized comment line may make it give up sooner, never later); each
event's C{end} is just past its blank line, the LF of a CRLF split between two
chunks aside; and the bytes from C{start} to C{end}, parsed alone, give the
same event.

Option bit 0 caps events at 64 bytes instead of 8 MiB, so that giving up is
reached too.

    .venv/bin/python tests/fuzz/fuzz_sse.py -max_total_time=60
"""

from __future__ import annotations

import atheris

from tests.fuzz.harness import check, chunkings, main, parse_input

with atheris.instrument_imports(include=["majordomo"]):
    from majordomo.usage.sse import MAX_EVENT_SIZE, SSEEvent, SSEParser

SMALL_CAP = 64


def feed(chunks: list[bytes], cap: int) -> tuple[list[SSEEvent], SSEParser]:
    parser = SSEParser(max_event_size=cap)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events, parser


def test_one_input(data: bytes) -> None:
    given = parse_input(data)
    body = given.body
    cap = SMALL_CAP if given.options & 1 else MAX_EVENT_SIZE
    whole, reference = feed([body], cap)
    for event in whole:
        check(
            body[event.end - 1 : event.end] in (b"\n", b"\r"),
            lambda event=event: f"{event} does not end just past a line ending",
        )
        alone = SSEParser(max_event_size=cap).feed(body[event.start : event.end])
        check(
            [(e.event, e.data) for e in alone] == [(event.event, event.data)],
            lambda event=event, alone=alone: f"{event} cut out of the stream parses as {alone}",
        )
    for how, chunks in chunkings(body, given.lengths):
        events, parser = feed(chunks, cap)
        check(parser.broken or not reference.broken, f"{how}: not broken")
        # Giving up sooner is allowed: a chunk may end inside an over-long
        # line that the whole body shows to be a comment.  Whatever came
        # before must still agree.
        whole_part = whole[: len(events)] if parser.broken else whole
        check(
            [(e.event, e.data, e.start) for e in events]
            == [(e.event, e.data, e.start) for e in whole_part],
            lambda how=how, events=events: f"{how}: {events} != {whole}",
        )
        for mine, theirs in zip(events, whole_part, strict=True):
            check(
                mine.end == theirs.end
                or (mine.end == theirs.end - 1 and body[mine.end - 1 : mine.end + 1] == b"\r\n"),
                f"{how}: {mine} ends elsewhere than {theirs}",
            )


if __name__ == "__main__":
    main(test_one_input, "sse")
