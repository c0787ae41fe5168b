# -*- test-case-name: tests.test_request_fields,tests.test_hostile_requests -*-
"""
The few members of a JSON request body the gateway reads (L{REQUEST_FIELDS}:
C{model}, C{stream}, C{stream_options}, the output caps), found without
building the document, and their byte offsets, so a member can be set by
splicing bytes into the body instead of re-serialising it.

The body is scanned, not parsed: the top-level object's members are walked
one by one and every value the gateway does not need is skipped by matching
its brackets outside strings.  Nested values are not validated (the
provider does that); the top-level object is, so a body that is not one
JSON object yields None and is forwarded untouched.  A value the gateway
needs is decoded only when it is small (L{MAX_DECODED}).

The scan runs in bounded steps (L{STEP_BYTES} of input each), so a large
body never holds the reactor: L{read} yields to it between steps.  The
scan keeps no stack, so nesting depth costs nothing; its work is linear in
the body's size whatever the body holds (strings are skipped by C{find} and
C regular expressions, brackets counted in C).
"""

from __future__ import annotations

import json
import re
from array import array
from collections.abc import Generator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime

# What the gateway reads from a request body: name -> None to decode the value,
# or the members to read from it when it is an object.  The caps and counts
# bound what a request can cost before it is sent (majordomo.policy.estimate):
# OpenAI's max_tokens / max_completion_tokens (Chat Completions, legacy
# Completions), max_output_tokens (Responses), n and best_of (answers made per
# request); Anthropic's max_tokens; Gemini's generationConfig (its protobuf
# JSON reader takes the snake_case spelling of every name too).
_GENERATION_CONFIG = dict.fromkeys(
    ("maxOutputTokens", "max_output_tokens", "candidateCount", "candidate_count")
)
REQUEST_FIELDS: dict[str, Any] = {
    "model": None,
    "stream": None,
    "stream_options": {"include_usage": None},
    "max_tokens": None,
    "max_completion_tokens": None,
    "max_output_tokens": None,
    "n": None,
    "best_of": None,
    "generationConfig": _GENERATION_CONFIG,
    "generation_config": _GENERATION_CONFIG,
}
# A body smaller than this is parsed whole, not scanned (see read).
PARSED_BELOW = 512 * 1024
# Input scanned between two turns of the reactor: a few milliseconds of work.
STEP_BYTES = 128 * 1024
# A wanted value larger than this is not decoded (a model name is not 64 KiB).
MAX_DECODED = 64 * 1024
# Each regular expression call looks at most this far ahead.
_WINDOW = 16 * 1024
_FIRST_WINDOW = 256  # for a container value; doubled while it goes on
# Work in bytes of budget: one loop iteration, however little it reads; one
# bracket counted (outside strings); one byte read by the slower regular
# expressions a window with escaped quotes takes.
_ITERATION_COST = 64
_BRACKET_COST = 8
_ESCAPED_COST = 4

NOT_READ = object()  # the value of a member that was not decoded

_WS = re.compile(rb"[ \t\r\n]*+")
# A string's content after its opening quote, up to (not including) the closing one.
_STRING_REST = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.DOTALL)
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
# Anything outside strings and complete strings; stops where a string opens
# and does not close before the window's end.
_OUTSIDE = re.compile(rb'(?:[^"]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.DOTALL)
_TOKEN = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"|[\[\]{}]', re.DOTALL)
_SCALAR = re.compile(rb'[^,:\[\]{}"\s]*+')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_DELTAS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")  # +1 / -1 as signed bytes
_OPEN = frozenset(b"[{")


def _names(wanted: dict[str, Any]) -> list[str]:
    """Every member name C{wanted} reads, nested ones included."""
    return [n for name, spec in wanted.items() for n in [name, *_names(spec or {})]]


# The longest escaped form of a wanted name ("\u0073\u0074..."): six bytes per character.
_LONGEST_KEY = 6 * max(len(name) for name in _names(REQUEST_FIELDS))


class _Malformed(Exception):
    """The body is not one JSON object (as far as the scan can tell)."""


@dataclass(slots=True)
class Member:
    """One member of an object: where its value lies in the body, and what it holds."""

    start: int
    end: int
    value: Any  # decoded, or NOT_READ
    members: JSONObject | None  # the members read from it, when it is an object


@dataclass(slots=True)
class JSONObject:
    """
    An object in the body: the offset of its C{{}, how many members it has,
    and the wanted ones (the last of each name, as JSON parsers take it).
    """

    start: int
    count: int
    members: dict[str, Member]

    def value(self, name: str) -> Any:
        """The decoded value of member C{name}; None when absent or not decoded."""
        member = self.members.get(name)
        return None if member is None or member.value is NOT_READ else member.value

    def values(self) -> dict[str, Any]:
        """
        The decoded wanted members, as a dict (what the whole document would
        have had); a wanted object that was scanned, not decoded, is the dict
        of its own wanted members.
        """
        found = {}
        for name, member in self.members.items():
            if member.members is not None:
                found[name] = member.members.values()
            elif member.value is not NOT_READ:
                found[name] = member.value
        return found

    @property
    def located(self) -> bool:
        """Whether the members' offsets are known (see L{read})."""
        return all(member.start >= 0 for member in self.members.values())

    def set_member(self, body: bytes, name: str, value: bytes) -> bytes:
        """
        C{body} with member C{name} of this object set to the JSON C{value}:
        the last such member's value replaced, else the member added first.
        Every other byte is kept.
        """
        member = self.members.get(name)
        whole = memoryview(body)  # (slices of it are not copies)
        if member is not None:
            assert member.start >= 0, "set_member needs a located object"
            return b"".join((whole[: member.start], value, whole[member.end :]))
        added = json.dumps(name).encode() + b":" + value + (b"," if self.count else b"")
        return b"".join((whole[: self.start + 1], added, whole[self.start + 1 :]))


def read_now(body: bytes, wanted: dict[str, Any] = REQUEST_FIELDS) -> JSONObject | None:
    """The wanted members of C{body}'s top-level object, scanned in one go."""
    scanner = _Scan(body)
    scan = scanner.top(wanted)
    try:
        while True:
            next(scan)
            scanner.spent = 0
    except StopIteration as done:
        return done.value


async def read(
    body: bytes, clock: IReactorTime, wanted: dict[str, Any] = REQUEST_FIELDS
) -> JSONObject | None:
    """
    The wanted members of C{body}'s top-level object.  A body of up to
    L{PARSED_BELOW} bytes is parsed whole (C{json.loads} takes about a
    millisecond for it, a tenth of the scan): its members' values are read,
    their offsets are not (L{JSONObject.located} finds them when needed).
    A larger or deeply nested one is scanned, letting the reactor run
    between steps of L{STEP_BYTES}.
    """
    if len(body) < PARSED_BELOW:
        try:
            document = json.loads(body.decode("utf-8"))
        except RecursionError:
            pass  # scanned instead, which has no depth limit
        except ValueError:
            return None
        else:
            return _unlocated(body, document, wanted)
    scanner = _Scan(body)
    scan = scanner.top(wanted)
    try:
        while True:
            next(scan)
            scanner.spent = 0
            await task.deferLater(clock, 0, lambda: None)
    except StopIteration as done:
        return done.value


def _unlocated(body: bytes, document: Any, wanted: dict[str, Any]) -> JSONObject | None:
    """The wanted members of a parsed document, without their offsets in C{body}."""
    if not isinstance(document, dict):
        return None
    members = {name: Member(-1, -1, document[name], None) for name in wanted if name in document}
    return JSONObject(len(body) - len(body.lstrip(b" \t\r\n")), len(document), members)


_Steps = Generator[None, None, int]


class _Scan:
    """One scan of one body.  Each generator yields when a step's budget is spent."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.spent = 0

    def top(self, wanted: dict[str, Any]) -> Generator[None, None, JSONObject | None]:
        body = self.body
        if not body or body[:1] not in b"{ \t\r\n":
            return None
        try:
            start = yield from self._skip(_WS, 0)
            found, end = yield from self._object(start, wanted)
            end = yield from self._skip(_WS, end)
        except _Malformed:
            return None
        return found if end == len(body) else None

    def _spend(self, count: int) -> bool:
        """Count work done; True when this step's budget is used up."""
        self.spent += count + _ITERATION_COST
        return self.spent >= STEP_BYTES

    def _byte(self, pos: int) -> int:
        if pos >= len(self.body):
            raise _Malformed()
        return self.body[pos]

    def _skip(self, pattern: re.Pattern[bytes], pos: int) -> _Steps:
        """Past the run of C{pattern} (a repeated character class) at C{pos}."""
        while True:
            limit = min(len(self.body), pos + _WINDOW)
            end = pattern.match(self.body, pos, limit).end()  # type: ignore[union-attr]
            if self._spend(end - pos):
                yield
            if end < limit or limit == len(self.body):
                return end
            pos = end

    def _object(self, pos: int, wanted: dict[str, Any]) -> Generator[None, None, Any]:
        """The object at C{pos} (its wanted members) and the offset just past it."""
        body = self.body
        if self._byte(pos) != ord("{"):
            raise _Malformed()
        members: dict[str, Member] = {}
        count = 0
        cursor = yield from self._skip(_WS, pos + 1)
        while self._byte(cursor) != ord("}"):
            if self._byte(cursor) != ord('"'):
                raise _Malformed()
            key_end = yield from self._string(cursor)
            name = _key(body[cursor + 1 : key_end - 1])
            colon = yield from self._skip(_WS, key_end)
            if self._byte(colon) != ord(":"):
                raise _Malformed()
            start = yield from self._skip(_WS, colon + 1)
            spec = wanted.get(name, NOT_READ) if name is not None else NOT_READ
            nested = None
            if isinstance(spec, dict) and self._byte(start) == ord("{"):
                nested, end = yield from self._object(start, spec)
            else:
                end = yield from self._value(start)
            if spec is not NOT_READ:
                value = _decoded(body[start:end]) if nested is None else NOT_READ
                members[name] = Member(start, end, value, nested)  # type: ignore[index]
            count += 1
            cursor = yield from self._skip(_WS, end)
            if self._byte(cursor) == ord(","):
                # (A trailing comma is let through: the provider judges it.)
                cursor = yield from self._skip(_WS, cursor + 1)
            elif self._byte(cursor) != ord("}"):
                raise _Malformed()
        return JSONObject(pos, count, members), cursor + 1

    def _value(self, pos: int) -> _Steps:
        """The offset just past the value at C{pos}."""
        first = self._byte(pos)
        if first == ord('"'):
            return (yield from self._string(pos))
        if first in _OPEN:
            return (yield from self._container(pos))
        end = yield from self._skip(_SCALAR, pos)
        if end == pos:
            raise _Malformed()
        return end

    def _string(self, pos: int) -> _Steps:
        """The offset just past the string whose opening quote is at C{pos}."""
        body = self.body
        pos += 1
        while True:
            limit = min(len(body), pos + _WINDOW)
            quote = body.find(b'"', pos, limit)
            # (pos is never inside an escape: windows end on whole escapes.)
            if quote != -1 and body.find(b'\\"', pos, quote + 1) == -1:
                end = quote  # no quote before it is escaped, nor it
            elif quote == -1 and body.find(b"\\", pos, limit) == -1:
                end = limit
            else:
                end = _STRING_REST.match(body, pos, limit).end()  # type: ignore[union-attr]
            if self._spend(end - pos):
                yield
            if end < limit and body[end] == ord('"'):
                return end + 1
            if limit == len(body):
                raise _Malformed()  # never closed
            pos = end  # the window ended inside the string (or just before a backslash)

    def _container(self, pos: int) -> _Steps:
        """
        The offset just past the array or object at C{pos}.  A stretch of it
        is taken whole when its brackets (outside strings) show it does not
        close there; the stretch where it closes is walked token by token.
        """
        body = self.body
        depth = 0
        window = _FIRST_WINDOW
        while True:
            limit = min(len(body), pos + window)
            cut, outside, cost = _outside_strings(body, pos, limit)
            brackets = outside.translate(None, _NOT_BRACKETS)
            if self._spend(cost + _BRACKET_COST * len(brackets)):
                yield
            closing = brackets.count(b"]") + brackets.count(b"}")
            if closing >= depth and brackets:
                steps = array("b", brackets.translate(_DELTAS))
                if depth + min(accumulate(steps)) <= 0:
                    return self._close(pos, cut, depth)
            depth += len(brackets) - 2 * closing
            pos = cut
            if cut < limit:  # a string starts here and goes on past the window
                pos = yield from self._string(cut)
            elif cut == len(body):
                raise _Malformed()
            window = min(window * 2, _WINDOW)

    def _close(self, pos: int, cut: int, depth: int) -> int:
        """Where the container closes, at most C{cut - pos} bytes on from C{pos}."""
        for token in _TOKEN.finditer(self.body, pos, cut):
            if len(token[0]) == 1:
                depth += 1 if token[0][0] in _OPEN else -1
                if depth == 0:
                    return token.end()
        raise AssertionError("the brackets said the container closes here")


def _outside_strings(body: bytes, pos: int, limit: int) -> tuple[int, bytes, int]:
    """
    Where in C{body[pos:limit]} (C{pos} outside any string) the last string
    that does not close in it starts (C{limit} if none), the bytes before
    that which are outside strings, and the work that took (in budget bytes).
    """
    if body.find(b'\\"', pos, limit) == -1:
        # No escaped quote: quotes alternate between opening and closing ones.
        pieces = body[pos:limit].split(b'"')
        cut = limit
        if len(pieces) % 2 == 0:  # the last string is not closed
            cut -= len(pieces.pop()) + 1
        return cut, b"".join(pieces[0::2]), limit - pos
    cut = _OUTSIDE.match(body, pos, limit).end()  # type: ignore[union-attr]
    return cut, _STRING.sub(b"", body[pos:cut]), _ESCAPED_COST * (limit - pos)


def _key(raw: bytes) -> str | None:
    """A member name, decoded when it could be one the gateway wants; else None."""
    if b"\\" not in raw:
        return raw.decode("utf-8", "replace") if len(raw) <= _LONGEST_KEY else None
    if len(raw) > _LONGEST_KEY:
        return None
    try:
        return json.loads(b'"' + raw + b'"')
    except ValueError:
        return None


def _decoded(raw: bytes) -> Any:
    """A small wanted value, decoded; NOT_READ when too large or not valid JSON."""
    if len(raw) > MAX_DECODED:
        return NOT_READ
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return NOT_READ
