# -*- test-case-name: tests.test_sse -*-
"""
Incremental framing for streamed response bodies: server-sent events, and the
single JSON array that Gemini streams when it is not asked for SSE.

Both splitters are fed the body chunk by chunk as it passes through the gateway
and hand back only complete units.  Each holds at most one unfinished unit, and
gives up (C{broken}) rather than buffer a unit larger than its cap, so a
misbehaving upstream cannot make the gateway's memory grow without bound.  An
unfinished unit left at the end of the body is dropped: there is no flush.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

# Far above any real event or array element, far below a memory problem.
MAX_EVENT_SIZE = 8 * 1024 * 1024

_CR = 0x0D
_LF = 0x0A
_COLON = 0x3A
_BOM = b"\xef\xbb\xbf"
# A line ending is CRLF, CR or LF; the atomic group keeps a CRLF from being
# read as a line ending and a blank line.
_EOL = rb"(?>\r\n|\r|\n)"
# Blank lines and comment lines: what may come between events.
_BETWEEN_EVENTS = re.compile(rb"(?:" + _EOL + rb"|:[^\r\n]*" + _EOL + rb")*")
# The end of an event: the end of its last line, then a blank line.
_EVENT_END = re.compile(_EOL + _EOL)
# In an event whose line endings are all LF: its data and event fields.
_DATA_FIELD = re.compile(rb"^data(?::[ ]?([^\n]*))?$", re.MULTILINE)
_EVENT_FIELD = re.compile(rb"^event(?::[ ]?([^\n]*))?$", re.MULTILINE)


@dataclass(frozen=True)
class SSEEvent:
    """
    One complete server-sent event.

    C{start} and C{end} locate it in the byte stream: the offset of its first
    field line, and the offset just past the blank line that ended it.  They
    let a caller cut the event out of the stream byte for byte.
    """

    event: str | None
    data: str
    start: int = 0
    end: int = 0


class SSEParser:
    """
    Splits a text/event-stream body into events, as the WHATWG EventSource
    algorithm does: LF, CRLF and CR line endings; C{:} comments; several
    C{data:} lines joined with LF; an event without data is not dispatched.
    C{id} and C{retry} are ignored: the gateway reads streams, it does not
    reconnect.
    """

    def __init__(self, max_event_size: int = MAX_EVENT_SIZE) -> None:
        self._max = max_event_size
        self._buf = bytearray()  # the unfinished event (or comment line)
        self._offset = 0  # stream offset of _buf[0]
        # The last chunk ended in CR: if the next byte is LF, it completes a CRLF.
        self._skip_lf = False
        self._first_line = True
        self._start: int | None = None  # stream offset of the current event
        self._search = 0  # stream offset from which its end is looked for
        self.broken = False

    @property
    def pending_start(self) -> int:
        """
        Stream offset of the first byte that is not yet known to lie outside
        an unfinished event: everything before it is complete.
        """
        return self._offset if self._start is None else self._start

    def skippable(self, data: bytes) -> bool:
        """
        Whether the parser is between events and C{data} holds only whole
        events (LF line endings, ending in a blank line), so that a caller who
        needs none of them may L{skip} it instead of feeding it.  Most chunks
        of a stream are like this: providers flush one event at a time.
        """
        return (
            self._start is None
            and not self._buf
            and not self._skip_lf
            and not self._first_line
            and not self.broken
            and data.endswith(b"\n\n")
            and b"\r" not in data
        )

    def skip(self, data: bytes) -> None:
        """Pass over C{data}, which L{skippable} accepted, without reading it."""
        self._offset += len(data)

    def feed(self, data: bytes) -> list[SSEEvent]:
        """
        Add the next chunk of the body; return the events it completed.

        The work is done by regular expressions over whole runs of bytes,
        never by a Python step per line: a run of blank lines and comments
        between events is passed over in one match, and an event is read
        once its blank line has come.  So a flood of newlines or carriage
        returns costs what scanning its bytes costs.
        """
        if self.broken or not data:
            return []
        buf = self._buf
        buf += data
        pos = 0
        if self._skip_lf:
            self._skip_lf = False
            if buf[0] == _LF:  # buf was empty: the CR ended the previous chunk
                pos = 1
        if self._first_line:
            if len(buf) - pos < len(_BOM) and _BOM.startswith(bytes(buf[pos:])):
                return []  # perhaps a byte order mark, not whole yet
            self._first_line = False
            if buf.startswith(_BOM, pos):
                pos += len(_BOM)
        events = []
        while True:
            if self._start is None:
                pos = _BETWEEN_EVENTS.match(buf, pos).end()  # type: ignore[union-attr]
                if pos == len(buf) or buf[pos] == _COLON:  # (an unfinished comment)
                    break
                self._start = self._search = self._offset + pos
            start = self._start - self._offset
            match = _EVENT_END.search(buf, self._search - self._offset)
            if match is None:
                self._search = self._offset + max(start, len(buf) - 2)
                break
            pos = match.end()
            if pos == len(buf) and buf[pos - 1] == _CR:
                self._skip_lf = True
            event = _event(bytes(buf[start:pos]), self._start, self._offset + pos)
            self._start = None
            if event is not None:
                events.append(event)
        keep = pos if self._start is None else self._start - self._offset
        del buf[:keep]
        self._offset += keep
        if len(buf) > self._max:
            self._break()
        return events

    def _break(self) -> None:
        self.broken = True
        self._buf = bytearray()


def _event(block: bytes, start: int, end: int) -> SSEEvent | None:
    """
    The event in C{block}, its field lines and the blank line that ends it;
    None if it has no data (such an event is not dispatched).
    """
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = _DATA_FIELD.findall(block)
    if not data:
        return None
    names = _EVENT_FIELD.findall(block)
    name = names[-1].decode("utf-8", "replace") if names else None
    return SSEEvent(name or None, b"\n".join(data).decode("utf-8", "replace"), start, end)


_WS = re.compile(r"[ \t\r\n]*")
_STRING_STOP = re.compile(r'["\\]')
_CONTAINER_STOP = re.compile(r'["{}\[\]]')
_SCALAR_STOP = re.compile(r"[ \t\r\n,\]]")
_DECODER = json.JSONDecoder()


def _skip_whitespace(text: str, i: int) -> int:
    match = _WS.match(text, i)
    return i if match is None else match.end()


class JSONArrayParser:
    """
    Decodes the elements of one JSON array as the array streams in, e.g.
    C{[{...}\\n,\\r\\n{...}\\n]}, whatever the whitespace between them.

    A light scanner tracks strings and nesting over each new chunk only, and
    an element is decoded once, when its closing bracket arrives, so the cost
    stays linear however finely the body is chunked.  A body that is not a
    JSON array makes the parser C{broken}.
    """

    def __init__(self, max_element_size: int = MAX_EVENT_SIZE) -> None:
        self._max = max_element_size
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        # Outside an element, what may come next: "[" (the opening bracket),
        # "first" (an element or "]"), "value" (an element, after a comma),
        # "," (a comma or "]").
        self._expect = "["
        self._in_element = False
        self._parts: list[str] = []  # text of the unfinished element
        self._size = 0
        self._scalar = False
        self._depth = 0
        self._in_string = False
        self._escape = False
        self.closed = False  # the closing "]" arrived
        self.broken = False

    def feed(self, data: bytes) -> list[Any]:
        """Add the next chunk of the body; return the elements it completed."""
        if self.broken or self.closed:
            return []
        text = self._decode(data)
        items: list[Any] = []
        i, n = 0, len(text)
        while i < n and not (self.broken or self.closed):
            if self._in_element:
                end = self._scan(text, i)
                self._keep(text[i:] if end is None else text[i:end])
                if end is None:
                    break
                self._complete(items)
                i = end
                continue
            i = _skip_whitespace(text, i)
            if i < n:
                i = self._between(text[i], i)
        return items

    def _between(self, char: str, i: int) -> int:
        """Handle one character outside an element; return where to go on."""
        expect = self._expect
        if expect == "[":
            self._expect = "first"
            self.broken = char != "["
        elif char == "]" and expect in ("first", ","):
            self.closed = True  # whatever follows the array is ignored
        elif char == "," and expect == ",":
            self._expect = "value"
        elif expect in ("first", "value"):
            self._begin(char)
            return i  # the scanner reads the element from its first character
        else:
            self.broken = True
        return i + 1

    def _begin(self, first: str) -> None:
        self._in_element = True
        self._parts, self._size = [], 0
        self._scalar = first not in '{["'
        self._depth, self._in_string, self._escape = 0, False, False

    def _scan(self, text: str, i: int) -> int | None:
        """Follow the element through C{text} from C{i}; return where it ends, if it does."""
        if self._scalar:
            match = _SCALAR_STOP.search(text, i)
            return None if match is None else match.start()
        n = len(text)
        while i < n:
            if self._escape:
                self._escape = False
                i += 1
            elif self._in_string:
                match = _STRING_STOP.search(text, i)
                if match is None:
                    return None
                i = match.end()
                if match.group() == "\\":
                    self._escape = True
                else:
                    self._in_string = False
                    if self._depth == 0:
                        return i
            else:
                match = _CONTAINER_STOP.search(text, i)
                if match is None:
                    return None
                i = match.end()
                char = match.group()
                if char == '"':
                    self._in_string = True
                elif char in "{[":
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth <= 0:
                        return i
        return None

    def _keep(self, part: str) -> None:
        self._parts.append(part)
        self._size += len(part)
        if self._size > self._max:
            self._break()

    def _complete(self, items: list[Any]) -> None:
        text = "".join(self._parts)
        self._in_element, self._parts = False, []
        self._expect = ","
        try:
            value, end = _DECODER.raw_decode(text)
        except (ValueError, RecursionError):
            self._break()
            return
        if end != len(text):
            self._break()
            return
        items.append(value)

    def _break(self) -> None:
        self.broken = True
        self._parts = []
