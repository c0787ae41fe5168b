"""
Tests for L{majordomo.usage.json_members}: the top-level members of a JSON object,
read chunk by chunk without building the document.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from majordomo.usage.json_members import (
    BYTES_PER_STEP,
    MAX_CREDIT,
    MAX_KEPT,
    MAX_MEMBER_SIZE,
    TopLevelMembers,
)

# Values whose strings hold what the scanner must not be fooled by.
_TRICKY_TEXT = st.text(
    alphabet=st.sampled_from('ab"\\/[]{},: \n\u00e9\u20ac\U0001f600'), max_size=12
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TRICKY_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_TRICKY_TEXT, children, max_size=4)
    ),
    max_leaves=20,
)
_LAYOUTS = st.sampled_from(
    [
        {},
        {"separators": (",", ":")},
        {"indent": 2},
        {"indent": "\t", "ensure_ascii": False},
        {"ensure_ascii": False},
    ]
)


def scan(body: bytes, cuts: list[int] | None = None) -> TopLevelMembers:
    """Feed C{body} to a new scanner, split at C{cuts} (or whole)."""
    members = TopLevelMembers()
    start = 0
    for cut in sorted(set(cuts or [])):
        members.feed(body[start:cut])
        start = cut
    members.feed(body[start:])
    return members


class EquivalenceTests(SynchronousTestCase):
    """On real JSON objects the scanner agrees with C{json.loads}, however the body is cut."""

    @settings(max_examples=400, deadline=None)
    @given(
        document=st.dictionaries(_TRICKY_TEXT, _JSON, max_size=6),
        layout=_LAYOUTS,
        cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    )
    def test_members_as_json_loads_reads_them(
        self, document: dict[str, Any], layout: dict[str, Any], cuts: list[int]
    ) -> None:
        body = json.dumps(document, **layout).encode("utf-8")
        members = scan(body, [cut % (len(body) + 1) for cut in cuts])
        self.assertEqual((members.closed, members.broken), (True, False))
        self.assertEqual(members.members, json.loads(body))

    def test_every_split_point(self) -> None:
        """A body cut at every byte, escapes and multi-byte characters included."""
        document = {
            "model": 'gpt-"4o"\\ \u00e9\U0001f600',
            "choices": [{"text": '}]{["\\"', "n": [[], {}, [{"a": "]"}]]}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        }
        body = json.dumps(document, ensure_ascii=False).encode("utf-8")
        for cut in range(len(body) + 1):
            for second in (cut, min(cut + 1, len(body)), min(cut + 2, len(body))):
                members = scan(body, [cut, second])
                self.assertEqual(members.members, document, (cut, second))
                self.assertTrue(members.closed and not members.broken, (cut, second))

    def test_prefix_is_not_closed(self) -> None:
        """A body cut short is neither closed nor broken: it is unfinished."""
        body = json.dumps({"usage": {"a": 1}, "data": [1, "x", {}]}).encode()
        for end in range(len(body)):
            members = scan(body[:end])
            self.assertEqual((members.closed, members.broken), (False, False), end)

    def test_duplicate_key_last_wins(self) -> None:
        """A key given twice counts with its last value, even one too big to keep."""
        self.assertEqual(scan(b'{"a": 1, "a": 2}').members, {"a": 2})
        big = b'"' + b"x" * MAX_MEMBER_SIZE + b'"'
        self.assertEqual(scan(b'{"a": 1, "a": ' + big + b"}").members, {})

    def test_bom(self) -> None:
        """A UTF-8 byte order mark before the object is allowed, as json.loads allows it."""
        self.assertEqual(scan(b'\xef\xbb\xbf{"a": 1}').members, {"a": 1})


class MalformedTests(SynchronousTestCase):
    """Bodies that are not one JSON object."""

    def test_broken(self) -> None:
        for body in (
            b"[1]",
            b'"text"',
            b"",
            b'{"a": 1,}',
            b'{"a": 1]',
            b'{"a" 1}',
            b'{"a": 1} x',
            b'{"a": 1}}',
            b"{1: 2}",
            b'{"a": tru}',
            b'{"a": [1}}',  # kept and decoded, so the mismatch shows
            b'{"a": "\xff"}',
            b'{"a\\x": 1}',
        ):
            members = scan(body)
            self.assertFalse(members.closed and not members.broken, body)
            if body:
                self.assertTrue(members.broken, body)

    def test_trailing_whitespace(self) -> None:
        self.assertEqual(scan(b'{"a": 1} \r\n\t').closed, True)


class BoundsTests(SynchronousTestCase):
    """What the scanner holds and how long it works are bounded by the body's own size."""

    def test_large_members_passed_over(self) -> None:
        """A member over the size cap is not kept; the members after it are."""
        members = TopLevelMembers()
        members.feed(b'{"model": "m", "choices": [{"text": "')
        for _ in range(64):
            members.feed(b'[{\\"' * 4096 + b"y" * 16384)
        members.feed(b'"}], "usage": {"total_tokens": 5}}')
        self.assertEqual(members.members, {"model": "m", "usage": {"total_tokens": 5}})
        self.assertTrue(members.closed and not members.broken)

    def test_kept_members_bounded_in_all(self) -> None:
        """Members are kept up to 1 MiB in all; past that only those that still fit."""
        value = json.dumps("x" * (MAX_MEMBER_SIZE - 100))
        body = "{" + ",".join(f'"k{i}": {value}' for i in range(40)) + ', "usage": 1}'
        members = scan(body.encode())
        self.assertTrue(members.closed and not members.broken)
        self.assertEqual(len(members.members), MAX_KEPT // len(value) + 1)
        self.assertEqual(members.members["usage"], 1)

    def test_dense_bodies_given_up(self) -> None:
        """
        Bodies denser in structure than any API answer (thousands of top-level
        members, nesting thousands deep) are given up, with the work spent
        bounded by the chunk: never more steps than the carried credit plus
        the chunk's own.
        """
        for head, unit in ((b"{", b'"k": 1, '), (b'{"a": ', b"[1, ")):
            members = TopLevelMembers()
            members.feed(head)
            for _ in range(200):
                members.feed(unit * (65536 // len(unit)))
            self.assertTrue(members.too_dense and members.broken, unit)

    def test_floods_of_small_containers_read(self) -> None:
        """Small containers, however many, are passed over whole: not dense."""
        for unit in (b"[], ", b'{"b": {}}, ', b"[[[[[1]]]]], "):
            body = b'{"a": [' + unit * (4 * 2**20 // len(unit)) + b'0], "usage": 1}'
            members = TopLevelMembers()
            for start in range(0, len(body), 65536):
                members.feed(body[start : start + 65536])
            self.assertEqual((members.members, members.closed), ({"usage": 1}, True), unit)

    def test_dense_real_answers_read(self) -> None:
        """
        The densest real answers, logprobs (OpenAI's, Gemini's) and safety
        ratings, are read in full whatever their length.
        """
        openai_token = {
            "token": "a",
            "logprob": -0.1,
            "bytes": [97],
            "top_logprobs": [{"token": "b", "logprob": -2.0, "bytes": [98]}] * 20,
        }
        gemini_candidate = {"token": "x", "tokenId": 1234, "logProbability": -0.5}
        ratings = {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}
        bodies: dict[str, dict[str, Any]] = {
            "openai": {"choices": [{"logprobs": {"content": [openai_token] * 20000}}]},
            "gemini": {
                "candidates": [
                    {
                        "logprobsResult": {
                            "topCandidates": [{"candidates": [gemini_candidate] * 8}] * 20000
                        }
                    }
                ]
            },
            "ratings": {"candidates": [{"safetyRatings": [ratings] * 100000}]},
        }
        for name, document in bodies.items():
            document["usage"] = {"total_tokens": 7}
            for separators in ((", ", ": "), (",", ":")):
                body = json.dumps(document, separators=separators).encode()
                members = TopLevelMembers()
                for start in range(0, len(body), 16384):
                    members.feed(body[start : start + 16384])
                self.assertFalse(members.too_dense, (name, separators, len(body)))
                self.assertEqual(members.members["usage"], {"total_tokens": 7}, name)
                self.assertGreaterEqual(
                    members._credit_bytes, MAX_CREDIT * BYTES_PER_STEP // 2, (name, separators)
                )
