"""
L{majordomo.providers.request_fields} reads what C{json.loads} would, without building
the document: the same values for the members it wants, offsets that hold
exactly those values, and None for whatever is not one JSON object.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from majordomo.providers import request_fields

_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_NAMES = st.sampled_from(["model", "stream", "stream_options", "messages", 'mo"del', "x"])
_OBJECTS = st.lists(st.tuples(_NAMES | st.text(max_size=6), _VALUES), max_size=6)


def _encode(members: list[tuple[str, Any]], ascii_only: bool, spaced: bool) -> bytes:
    separator = ", " if spaced else ","
    colon = " : " if spaced else ":"
    parts = [
        json.dumps(name, ensure_ascii=ascii_only)
        + colon
        + json.dumps(value, ensure_ascii=ascii_only)
        for name, value in members
    ]
    return ("{" + separator.join(parts) + "}").encode("utf-8", "surrogatepass")


class AgreesWithJSONTests(SynchronousTestCase):
    """On valid JSON the scan reads what json.loads reads (duplicates: the last counts)."""

    @settings(max_examples=400, deadline=None)
    @given(_OBJECTS, st.booleans(), st.booleans())
    def test_values_and_offsets(
        self, members: list[tuple[str, Any]], ascii_only: bool, spaced: bool
    ) -> None:
        body = _encode(members, ascii_only, spaced)
        try:
            document = json.loads(body)
        except ValueError:  # a lone surrogate encoded raw: not UTF-8
            return
        found = request_fields.read_now(body)
        assert found is not None
        self.assertEqual(found.count, len(members))
        for name in request_fields.REQUEST_FIELDS:
            member = found.members.get(name)
            self.assertEqual(member is not None, name in document, name)
            if member is not None:
                self.assertEqual(json.loads(body[member.start : member.end]), document[name])

    def test_not_an_object(self) -> None:
        for body in (
            b"",
            b"[]",
            b'"x"',
            b"{",
            b'{"a":1',
            b'{"a":1}x',
            b'{"a" 1}',
            b"\xef\xbb\xbf{}",
        ):
            self.assertIsNone(request_fields.read_now(body), body)

    def test_large_body_read_in_steps(self) -> None:
        """A body over PARSED_BELOW is scanned in several steps, each after a reactor turn."""
        clock = task.Clock()
        turns: list[float] = []
        call_later = clock.callLater
        clock.callLater = lambda delay, *a, **kw: turns.append(delay) or call_later(delay, *a, **kw)  # type: ignore[method-assign]
        body = json.dumps({"messages": ["x" * 1000] * 2000, "model": "m", "stream": True}).encode()
        self.assertGreater(len(body), request_fields.STEP_BYTES * 4)
        d = defer.Deferred.fromCoroutine(request_fields.read(body, clock))
        self.assertFalse(d.called)
        clock.advance(0)
        self.assertGreater(len(turns), 4)
        found = self.successResultOf(d)
        self.assertEqual(found.values(), {"model": "m", "stream": True})
