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
_NAMES = st.sampled_from(
    [*request_fields.REQUEST_FIELDS, "messages", 'mo"del', "x", "maxOutputTokens"]
)
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


class NestedMembersTests(SynchronousTestCase):
    """
    A wanted object's wanted members (stream_options, Gemini's
    generationConfig) are read whether the body is parsed whole or scanned.
    """

    def read_both_ways(self, document: dict[str, Any]) -> list[dict[str, Any]]:
        """values() of C{document} parsed (small) and scanned (padded past PARSED_BELOW)."""
        found = []
        for pad in (0, request_fields.PARSED_BELOW):
            padded = {"contents": ["x" * pad], **document} if pad else document
            clock = task.Clock()
            d = defer.Deferred.fromCoroutine(
                request_fields.read(json.dumps(padded).encode(), clock)
            )
            while not d.called:
                clock.advance(0)
            read = self.successResultOf(d)
            assert read is not None
            found.append(read.values())
        return found

    def test_generation_config(self) -> None:
        config = {"temperature": 0.5, "maxOutputTokens": 512, "candidateCount": 2}
        parsed, scanned = self.read_both_ways({"generationConfig": config})
        self.assertEqual(parsed["generationConfig"], config)
        self.assertEqual(scanned["generationConfig"], {"maxOutputTokens": 512, "candidateCount": 2})
        _, scanned = self.read_both_ways({"generation_config": {"max_output_tokens": 9}})
        self.assertEqual(scanned["generation_config"], {"max_output_tokens": 9})

    def test_caps_and_counts(self) -> None:
        document = {"model": "m", "max_tokens": 5, "max_completion_tokens": 6, "n": 2, "best_of": 3}
        for found in self.read_both_ways({**document, "max_output_tokens": 7}):
            self.assertEqual(found, {**document, "max_output_tokens": 7})

    def test_not_an_object(self) -> None:
        """A wanted object given as something else is that value, decoded."""
        for found in self.read_both_ways({"generationConfig": [1, 2], "stream_options": None}):
            self.assertEqual(found, {"generationConfig": [1, 2], "stream_options": None})
