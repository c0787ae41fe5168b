"""
Tests for L{majordomo.usage.sse}: the incremental SSE and JSON-array splitters.
"""

from __future__ import annotations

import json
import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from majordomo.usage.sse import JSONArrayParser, SSEEvent, SSEParser

STREAM = (
    b': keep-alive\nevent: first\ndata: one\n\ndata: {"a": 1}\ndata:two lines\n\ndata: [DONE]\n\n'
)
EXPECTED = [("first", "one"), (None, '{"a": 1}\ntwo lines'), (None, "[DONE]")]


def _events(events: list[SSEEvent]) -> list[tuple[str | None, str]]:
    return [(event.event, event.data) for event in events]


def _feed_split(parser: SSEParser, body: bytes, cuts: list[int]) -> list[SSEEvent]:
    """Feed C{body} cut at the given offsets."""
    events = []
    edges = [0, *cuts, len(body)]
    for start, end in zip(edges, edges[1:], strict=False):
        events += parser.feed(body[start:end])
    return events


class SSEParserTests(SynchronousTestCase):
    """L{SSEParser} splits an event stream into events."""

    def test_lf(self) -> None:
        """LF-terminated lines give events with their names and joined data."""
        self.assertEqual(_events(SSEParser().feed(STREAM)), EXPECTED)

    def test_crlf(self) -> None:
        """CRLF line endings (Google, Vertex) give the same events."""
        body = STREAM.replace(b"\n", b"\r\n")
        self.assertEqual(_events(SSEParser().feed(body)), EXPECTED)

    def test_cr(self) -> None:
        """Bare CR line endings give the same events."""
        body = STREAM.replace(b"\n", b"\r")
        self.assertEqual(_events(SSEParser().feed(body)), EXPECTED)

    def test_every_split_point(self) -> None:
        """
        Cutting the stream in two at any byte, including between the CR and
        LF of a CRLF, gives the same events for LF, CRLF and CR endings.
        """
        for eol in (b"\n", b"\r\n", b"\r"):
            body = STREAM.replace(b"\n", eol)
            for cut in range(len(body) + 1):
                events = _feed_split(SSEParser(), body, [cut])
                self.assertEqual(_events(events), EXPECTED, (eol, cut))

    def test_byte_at_a_time(self) -> None:
        """Feeding one byte at a time gives the same events, whatever the line endings."""
        for eol in (b"\n", b"\r\n", b"\r"):
            body = STREAM.replace(b"\n", eol)
            events = _feed_split(SSEParser(), body, list(range(1, len(body))))
            self.assertEqual(_events(events), EXPECTED, eol)

    def test_crlf_split_is_one_line_ending(self) -> None:
        """
        A CR ending one chunk and a LF starting the next are one line ending,
        not a line ending and a blank line that would end the event early.
        """
        parser = SSEParser()
        self.assertEqual(parser.feed(b"event: e\r"), [])
        self.assertEqual(parser.feed(b"\ndata: x\r"), [])
        self.assertEqual(_events(parser.feed(b"\n\r\n")), [("e", "x")])

    def test_comments_ignored(self) -> None:
        """Comment lines, between and inside events, add no data."""
        body = b":ping\n\ndata: a\n: note\ndata: b\n\n"
        self.assertEqual(_events(SSEParser().feed(body)), [(None, "a\nb")])

    def test_event_without_data_not_dispatched(self) -> None:
        """An event with a name but no data line is not dispatched, and its name does not leak."""
        body = b"event: lonely\n\ndata: x\n\n"
        self.assertEqual(_events(SSEParser().feed(body)), [(None, "x")])

    def test_field_value_space(self) -> None:
        """Only one space after the colon is dropped; a field without colon is ignored."""
        body = b"data:  two\ndata\nretry: 10\nid: 4\n\n"
        self.assertEqual(_events(SSEParser().feed(body)), [(None, " two\n")])

    def test_trailing_partial_event_discarded(self) -> None:
        """An event the stream does not end with a blank line is never dispatched."""
        parser = SSEParser()
        events = parser.feed(b"data: a\n\ndata: b\n")
        self.assertEqual(_events(events), [(None, "a")])
        self.assertEqual(parser.feed(b"data: c"), [])

    def test_bom_stripped(self) -> None:
        """A UTF-8 byte order mark at the start does not hide the first field."""
        self.assertEqual(_events(SSEParser().feed(b"\xef\xbb\xbfdata: x\n\n")), [(None, "x")])

    def test_offsets(self) -> None:
        """An event's offsets span from its first field line to just past its blank line."""
        body = b": c\n\ndata: a\n\ndata: b\r\n\r\n"
        first, second = SSEParser().feed(body)
        self.assertEqual(body[first.start : first.end], b"data: a\n\n")
        self.assertEqual(body[second.start : second.end], b"data: b\r\n\r\n")

    def test_pending_start(self) -> None:
        """Only an unfinished event or line is counted as pending."""
        parser = SSEParser()
        parser.feed(b"data: a\n\n: ping\n")
        self.assertEqual(parser.pending_start, 16)
        parser.feed(b"data: b\nda")
        self.assertEqual(parser.pending_start, 16)

    def test_cap_on_long_line(self) -> None:
        """A line longer than the cap breaks the parser instead of growing its buffer."""
        parser = SSEParser(max_event_size=100)
        for _ in range(20):
            parser.feed(b"x" * 10)
        self.assertTrue(parser.broken)
        self.assertEqual(len(parser._buf), 0)
        self.assertEqual(parser.feed(b"\n\ndata: a\n\n"), [])

    def test_cap_on_many_data_lines(self) -> None:
        """An event made of many short data lines is capped as a whole."""
        parser = SSEParser(max_event_size=100)
        parser.feed(b"data: 0123456789\n" * 20)
        self.assertTrue(parser.broken)

    def test_under_cap_is_fine(self) -> None:
        """Many events each under the cap do not add up to break the parser."""
        parser = SSEParser(max_event_size=100)
        events = parser.feed(b"data: 0123456789\n\n" * 100)
        self.assertEqual(len(events), 100)
        self.assertFalse(parser.broken)

    def test_invalid_utf8(self) -> None:
        """Undecodable bytes are replaced, not raised."""
        self.assertEqual(_events(SSEParser().feed(b"data: \xff\n\n")), [(None, "\ufffd")])


ELEMENTS = [{"a": 1, "s": 'x,]}"\\'}, {"b": [1, 2, {"c": None}]}, {"d": "é"}]


def _array_feed(parser: JSONArrayParser, body: bytes, cuts: list[int]) -> list[Any]:
    items = []
    edges = [0, *cuts, len(body)]
    for start, end in zip(edges, edges[1:], strict=False):
        items += parser.feed(body[start:end])
    return items


class JSONArrayParserTests(SynchronousTestCase):
    """L{JSONArrayParser} decodes a streamed JSON array element by element."""

    def test_gemini_shape(self) -> None:
        """Gemini's C{[{...}\\n,\\r\\n{...}\\n]} layout decodes to its elements."""
        body = ("[" + "\n,\r\n".join(json.dumps(e) for e in ELEMENTS) + "\n]").encode()
        self.assertEqual(JSONArrayParser().feed(body), ELEMENTS)

    def test_odd_whitespace(self) -> None:
        """Any whitespace, or none, around brackets and commas is accepted."""
        for sep in (",", " , ", "\r\n,\t\n ", "\n\n,\n\n"):
            body = (" \r\n[ \t" + sep.join(json.dumps(e) for e in ELEMENTS) + "\r\n ]\n").encode()
            self.assertEqual(JSONArrayParser().feed(body), ELEMENTS, sep)

    def test_every_split_point(self) -> None:
        """Cutting the body at any byte, even in a UTF-8 character or escape, changes nothing."""
        body = (
            "[" + "\n,\r\n".join(json.dumps(e, ensure_ascii=False) for e in ELEMENTS) + "]"
        ).encode()
        for cut in range(len(body) + 1):
            self.assertEqual(_array_feed(JSONArrayParser(), body, [cut]), ELEMENTS, cut)

    def test_elements_as_soon_as_complete(self) -> None:
        """Each element is returned by the feed that completes it, before the array ends."""
        parser = JSONArrayParser()
        self.assertEqual(parser.feed(b'[{"a": 1}'), [{"a": 1}])
        self.assertEqual(parser.feed(b',{"b"'), [])
        self.assertEqual(parser.feed(b":2}\n"), [{"b": 2}])
        self.assertFalse(parser.closed)
        self.assertEqual(parser.feed(b"]"), [])
        self.assertTrue(parser.closed)

    def test_scalars_and_empty(self) -> None:
        """Scalar elements and an empty array decode too."""
        self.assertEqual(
            JSONArrayParser().feed(b'[1, "two", true ,null,[]]'), [1, "two", True, None, []]
        )
        parser = JSONArrayParser()
        self.assertEqual(parser.feed(b"[ ]"), [])
        self.assertTrue(parser.closed)

    def test_partial_element_discarded(self) -> None:
        """An element cut off by the end of the body is never returned."""
        parser = JSONArrayParser()
        self.assertEqual(parser.feed(b'[{"a": 1},\n{"b": '), [{"a": 1}])
        self.assertFalse(parser.broken)

    def test_not_an_array(self) -> None:
        """A body that is not a JSON array (an object, HTML) breaks the parser."""
        for body in (b'{"a": 1}', b"<html>", b"[1 2]", b"[1,]", b"[}]", b"[tru]"):
            parser = JSONArrayParser()
            parser.feed(body)
            self.assertTrue(parser.broken, body)

    def test_cap(self) -> None:
        """An element larger than the cap breaks the parser and frees its buffer."""
        parser = JSONArrayParser(max_element_size=100)
        parser.feed(b'[{"a": "')
        for _ in range(20):
            parser.feed(b"x" * 10)
        self.assertTrue(parser.broken)
        self.assertEqual(parser._parts, [])

    def test_many_small_chunks_linear(self) -> None:
        """
        A large element fed in small chunks is scanned once, not re-decoded on
        every chunk: one megabyte in 64-byte chunks decodes promptly.
        """
        element = {"text": "y" * (1 << 20), "n": list(range(1000))}
        body = b"[" + json.dumps(element).encode() + b"]"
        parser = JSONArrayParser()
        items: list[Any] = []
        for start in range(0, len(body), 64):
            items += parser.feed(body[start : start + 64])
        self.assertEqual(items, [element])

    def test_random_chunks(self) -> None:
        """Random chunking of a nested array gives the same elements."""
        rng = random.Random(7)
        elements = [{"k": [i, {"q": '"]\\' * i}], "u": "ü€😀"} for i in range(30)]
        body = json.dumps(elements, ensure_ascii=False, indent=1).encode()
        for _ in range(20):
            cuts = sorted(rng.sample(range(1, len(body)), 40))
            self.assertEqual(_array_feed(JSONArrayParser(), body, cuts), elements)
