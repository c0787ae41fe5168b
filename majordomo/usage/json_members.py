# -*- test-case-name: tests.test_json_members -*-
"""
The small top-level members of a JSON object, read as the object streams in,
without building the whole document.

A non-streamed answer can be tens of megabytes (embeddings, logprobs, long
completions) while what the gateway needs of it, the C{usage} and the
C{model}, is a few hundred bytes at the top level.  Decoding the whole body
at its end took the reactor for as long as C{json.loads} needed: about a
second for 32 MiB of small numbers.  L{TopLevelMembers} instead follows the
object's structure over each new chunk only, keeps the top-level members small
enough to matter and decodes each as it ends; a large member (the choices, the
embeddings) is passed over without being held or decoded.

The cost of a chunk is linear in the chunk and spent mostly in the regular
expression engine: strings and the text between brackets are passed over in
one match, a run of brackets in one step, and only a run that may close the
member is followed a bracket at a time.  The scanner checks the structure it
walks (brackets, strings, the object's own commas and colons) but not the
scalars inside members it does not keep: a malformed member that is passed
over goes unnoticed, while one that is kept fails its decoding.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A member kept for decoding is at most this big; larger ones are passed over.
MAX_MEMBER_SIZE = 64 * 1024
# All kept members together: past this, later members are passed over too.
MAX_KEPT = 1024 * 1024
# A key longer than this names nothing the gateway reads.
MAX_KEY_SIZE = 1024
# Each chunk pays for one step of scanning (a member, a string or a container
# split by the chunk, a container nested deeper than CONTAINER_LEVELS, a run
# of closing brackets) per this many bytes, plus a few steps per chunk, and
# unused steps carry over up to MAX_CREDIT.  Real answers need a few steps per
# chunk; no chunk costs more than MAX_CREDIT + 64 KiB / BYTES_PER_STEP steps.
# A body denser than that (thousands of members, nesting thousands deep) is
# not an API answer; it is forwarded unread.
BYTES_PER_STEP = 64
STEPS_PER_CHUNK = 4
MAX_CREDIT = 1024
# Containers up to this many levels deep are passed over in one match.
CONTAINER_LEVELS = 5

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = re.compile(rb"[ \t\r\n]*+")
# The rest of a string, from after its opening quote (or a split escape) up
# to, not including, its closing quote or a backslash that ends the chunk.
_STRING_REST = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)


_TEXT = rb'[^"\[\]{}]++'


def _containers(text: bytes, levels: int) -> bytes:
    """
    A pattern for C{text}, strings, and whole containers up to C{levels}
    deep.  Every quantifier is possessive: the engine never backtracks, so
    a container the chunk cuts short costs one pass over what it holds.
    Bracket kinds are not matched against each other (C{json.loads} checks
    the members that are kept).
    """
    string = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
    inside = _TEXT + rb"|" + string
    for _ in range(levels):
        container = rb"[\[{](?:" + inside + rb")*+[\]}]"
        inside = _TEXT + rb"|" + string + rb"|" + container
    return rb"(?:" + text + rb"|" + string + rb"|" + container + rb")*+"


# Inside a member's value: text, strings and containers, up to a bracket
# that opens something deeper (or cut by the chunk) or closes.
_NESTED_TEXT = re.compile(_containers(_TEXT, CONTAINER_LEVELS), re.DOTALL)
# At the member's own level, a comma ends the member as well.
_MEMBER_TEXT = re.compile(_containers(rb'[^"\[\]{},]++', CONTAINER_LEVELS), re.DOTALL)
_CLOSERS_RUN = re.compile(rb"[\]}]++")

_QUOTE, _BACKSLASH, _COMMA, _COLON = 0x22, 0x5C, 0x2C, 0x3A
_OPEN_OBJECT, _CLOSE_OBJECT = 0x7B, 0x7D
_OPENERS = frozenset(b"[{")

# Where the scanner stands between chunks.
_START = "start"  # before the object's "{"
_KEY = "key"  # before a key, or the "}" of an empty object
_KEY_STRING = "key string"  # inside a key
_COLON_NEXT = "colon"  # after a key
_VALUE = "value"  # inside a member's value
_AFTER = "after"  # after the closing "}"


def _skip(pattern: re.Pattern[bytes], data: bytes, i: int) -> int:
    """Where C{pattern} (which cannot fail at C{i}) stops matching from C{i}."""
    match = pattern.match(data, i)
    assert match is not None
    return match.end()


class TopLevelMembers:
    """
    Feed a JSON object's bytes chunk by chunk; C{members} then holds its
    top-level members that were small enough to keep, decoded, and C{closed}
    says whether the object ended.  A body that is not one JSON object (or
    whose structure breaks, or that needs more steps than its size pays for:
    C{too_dense}) makes the scanner C{broken}; it then ignores the rest.  A key
    given twice keeps its last value, as C{json.loads} does.
    """

    def __init__(self, max_member_size: int = MAX_MEMBER_SIZE, max_kept: int = MAX_KEPT) -> None:
        self._max_member = max_member_size
        self._kept_room = max_kept
        self.members: dict[str, Any] = {}
        self.closed = False
        self.broken = False
        self.too_dense = False  # broken because it needed too many steps
        self._state = _START
        self._bom_checked = False
        self._start = b""  # the first bytes, while they may be a split BOM
        self._key_parts: list[bytes] = []
        self._key_size = 0
        self._key: str | None = None  # the member's key; None if too long to matter
        self._member_count = 0
        # The value being followed: its nesting depth below the member, and
        # whether it is inside a string (with an escape split off the chunk).
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._parts: list[bytes] | None = None  # the value's bytes, if kept
        self._size = 0
        # What is left to spend on scanning, in bytes (see BYTES_PER_STEP).
        self._credit_bytes = MAX_CREDIT * BYTES_PER_STEP

    def feed(self, data: bytes) -> None:
        """Follow the object through the next chunk of the body."""
        if not self._bom_checked:
            data = self._without_bom(data)
        i, n = 0, len(data)
        self._credit_bytes = min(self._credit_bytes, MAX_CREDIT * BYTES_PER_STEP) + len(data)
        self._credit_bytes += STEPS_PER_CHUNK * BYTES_PER_STEP
        while i < n and not self.broken:
            state = self._state
            if state == _VALUE:
                i = self._value(data, i, n)
            elif state == _KEY_STRING:
                self._spend()
                i = self._key_string(data, i, n)
            else:
                self._spend()
                i = _skip(_WHITESPACE, data, i)
                if i < n:
                    self._punctuation(state, data[i])
                    i += 1

    def _without_bom(self, data: bytes) -> bytes:
        """The body's first bytes without the UTF-8 byte order mark, if it has one."""
        data = self._start + data
        if len(data) < len(_BOM) and _BOM.startswith(data):
            self._start = data
            return b""
        self._bom_checked, self._start = True, b""
        return data.removeprefix(_BOM)

    def _punctuation(self, state: str, byte: int) -> None:
        """One structural byte outside keys and values."""
        if state == _START and byte == _OPEN_OBJECT:
            self._state = _KEY
        elif state == _KEY and byte == _QUOTE:
            self._state, self._key_parts, self._key_size = _KEY_STRING, [], 0
        elif state == _KEY and byte == _CLOSE_OBJECT and self._member_count == 0:
            self._close()  # "{}"; after a comma, "}" is an error
        elif state == _COLON_NEXT and byte == _COLON:
            self._begin_value()
        else:
            self._break()

    def _key_string(self, data: bytes, i: int, n: int) -> int:
        """Read a key up to its closing quote; return where to go on."""
        start = i
        if self._escape:
            self._escape, i = False, i + 1
        end = _skip(_STRING_REST, data, i)
        if end < n and data[end] == _BACKSLASH:
            self._escape, end = True, end + 1  # the escaped byte is in the next chunk
        self._key_size += end - start
        if self._key_size <= MAX_KEY_SIZE:
            self._key_parts.append(data[start:end])
        if end >= n:
            return n
        raw = b"".join(self._key_parts)
        self._key_parts = []
        key = None
        if self._key_size <= MAX_KEY_SIZE:
            try:
                key = json.loads('"' + raw.decode("utf-8") + '"')
            except ValueError:
                self._break()
                return n
        self._key, self._state = key, _COLON_NEXT
        self._member_count += 1
        return end + 1

    def _begin_value(self) -> None:
        self._state = _VALUE
        self._depth, self._in_string, self._escape = 0, False, False
        self._parts = [] if self._key is not None else None
        self._size = 0

    def _value(self, data: bytes, i: int, n: int) -> int:
        """
        Follow the member's value through C{data} from C{i} until it ends or
        the chunk does; return where to go on.
        """
        start = i
        while i < n:
            self._spend()
            if self.broken:
                return n
            if self._in_string:
                i = self._string_rest(data, i, n)
            else:
                # At the member's own level a comma ends the member as well.
                text = _MEMBER_TEXT if self._depth == 0 else _NESTED_TEXT
                i = _skip(text, data, i)
                if i >= n:
                    break
                byte = data[i]
                if byte == _QUOTE:
                    self._in_string, i = True, i + 1
                elif byte in _OPENERS:
                    # A container deeper than CONTAINER_LEVELS, or cut by the chunk.
                    self._depth, i = self._depth + 1, i + 1
                elif self._depth > 0:
                    i = self._closers(data, i)
                elif byte in (_COMMA, _CLOSE_OBJECT):
                    self._keep(data, start, i)
                    self._end_member()
                    if byte == _COMMA:
                        self._state = _KEY
                    else:
                        self._close()
                    return i + 1
                else:
                    self._break()  # "]" at the member's own level
                    return n
        self._keep(data, start, n)
        return n

    def _closers(self, data: bytes, i: int) -> int:
        """A run of closing brackets from C{i}: the value may end inside it."""
        end = _skip(_CLOSERS_RUN, data, i)
        if self._depth > end - i:
            self._depth -= end - i
            return end
        i += self._depth
        self._depth = 0
        return i

    def _spend(self) -> None:
        """One step of scanning; a body that needs too many gives up."""
        self._credit_bytes -= BYTES_PER_STEP
        if self._credit_bytes < 0:
            self.too_dense = True
            self._break()

    def _string_rest(self, data: bytes, i: int, n: int) -> int:
        """Inside a string of the value: return where it ends, or C{n}."""
        if self._escape:
            self._escape, i = False, i + 1
        end = _skip(_STRING_REST, data, i)
        if end >= n:
            return n
        if data[end] == _BACKSLASH:
            self._escape = True
            return n  # the backslash ends the chunk: what it escapes comes next
        self._in_string = False
        return end + 1

    def _keep(self, data: bytes, start: int, end: int) -> None:
        """Add C{data[start:end]} to the value, if it is still small enough to keep."""
        if self._parts is None or end <= start:
            return
        self._size += end - start
        if self._size > min(self._max_member, self._kept_room):
            self._parts = None
        else:
            self._parts.append(data[start:end])

    def _end_member(self) -> None:
        """The member's value ended: decode it if it was kept."""
        parts, self._parts = self._parts, None
        if self._key is None:
            return
        if parts is None:
            # Passed over: an earlier, smaller value of the same key is not
            # the one that counts (the last one does).
            self.members.pop(self._key, None)
            return
        try:
            self.members[self._key] = json.loads(b"".join(parts).decode("utf-8"))
        except (ValueError, RecursionError):
            self._break()
            return
        self._kept_room -= self._size

    def _close(self) -> None:
        self.closed, self._state = True, _AFTER

    def _break(self) -> None:
        self.broken = True
        self._parts = None
        self._key_parts = []
