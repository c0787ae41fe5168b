"""
Tests for the incremental usage parsers (L{majordomo.usage.choose.make_usage_parser}
and the provider modules), driven first by the shared test vectors.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from majordomo.providers.openai_usage import inject_include_usage
from majordomo.usage import (
    COMPLETE,
    ERROR_NOT_BILLED,
    MISSING_NOT_REQUESTED,
    MISSING_STREAM_TRUNCATED,
    NOT_APPLICABLE,
    PARTIAL_STREAM_TRUNCATED,
    UNPARSEABLE,
    Usage,
)
from majordomo.usage.choose import make_usage_parser
from majordomo.usage.openai import UsageChunkFilter, usage_from_body
from majordomo.usage.parsing import JSONBodyParser
from tests.vectors import TOKEN_FIELDS, load_vector, vector_files, vector_parser

# The keys of a vector's "expected" that are Usage fields (or its property).
USAGE_KEYS = (*TOKEN_FIELDS, "usage_status", "model", "uncached_input_tokens")

SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"


def load_vectors() -> list[tuple[str, dict[str, Any]]]:
    """Every vector file (shared and our own), by name; none found is an error, not a skip."""
    return [(os.path.basename(path), load_vector(path)) for path in vector_files()]


def parser_for(name: str, vector: dict[str, Any]) -> Any:
    """The parser the gateway would build for a vector's response."""
    return vector_parser(vector, usage_requested=not name.startswith("04_"))


def run(parser: Any, body: bytes, chunks: list[int] | None = None, complete: bool = True) -> Usage:
    """Feed C{body} to C{parser} in chunks of the given sizes (whole if None)."""
    if chunks is None:
        parser.feed(body)
    else:
        offset = 0
        for size in chunks:
            parser.feed(body[offset : offset + size])
            offset += size
        parser.feed(body[offset:])
    usage: Usage = parser.finish(complete=complete)
    return usage


def sse(*events: Any, eol: str = "\n") -> bytes:
    """An SSE body of C{(name, obj)} pairs or bare objects."""
    lines = []
    for event in events:
        name, obj = event if isinstance(event, tuple) else (None, event)
        if name is not None:
            lines.append(f"event: {name}")
        lines.append("data: " + (obj if isinstance(obj, str) else json.dumps(obj)))
        lines.append("")
    return (eol.join(lines) + eol).encode()


class VectorTests(SynchronousTestCase):
    """Every shared test vector gives exactly its expected usage, however it is chunked."""

    def check(self, chunking: str) -> None:
        rng = random.Random(1234)
        for name, vector in load_vectors():
            body = vector["response_body"].encode("utf-8")
            if chunking == "whole":
                chunks = None
            elif chunking == "events":  # as providers flush: one event per chunk
                chunks = [len(event) + 2 for event in body.split(b"\n\n")[:-1]]
            elif chunking == "bytes":
                chunks = [1] * len(body)
            else:
                chunks = [rng.randint(1, 97) for _ in range(len(body) // 40)]
            usage = run(parser_for(name, vector), body, chunks)
            expected = vector["expected"]
            checked = [key for key in USAGE_KEYS if key in expected]
            self.assertIn("usage_status", checked, name)
            for key in checked:
                self.assertEqual(getattr(usage, key), expected[key], f"{name} {chunking} {key}")
            if "service_tier" in expected:
                self.assertEqual(usage.service_tier, expected["service_tier"], name)

    def test_whole(self) -> None:
        """Each vector's body fed in one piece gives its expected usage."""
        self.check("whole")

    def test_byte_at_a_time(self) -> None:
        """Each vector's body fed one byte at a time gives its expected usage."""
        self.check("bytes")

    def test_event_at_a_time(self) -> None:
        """
        Each vector's body fed one whole event per chunk, as providers flush
        (the chunks the parsers pass over unread), gives its expected usage.
        """
        self.check("events")

    def test_random_chunks(self) -> None:
        """Each vector's body fed in random-sized chunks gives its expected usage."""
        self.check("random")

    def test_raw_kept(self) -> None:
        """Complete usage keeps the provider's raw usage object for re-pricing."""
        for name, vector in load_vectors():
            usage = run(parser_for(name, vector), vector["response_body"].encode())
            if usage.usage_status == COMPLETE:
                self.assertIsInstance(usage.raw, dict, name)


def chat_chunk(
    content: str | None = None, usage: Any = None, model: str = "gpt-4o-2024-08-06"
) -> dict:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    return {"object": "chat.completion.chunk", "model": model, "choices": choices, "usage": usage}


USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
STREAM_WITH_USAGE = sse(chat_chunk("Hi"), chat_chunk("!"), chat_chunk(None, USAGE), "[DONE]")
STREAM_WITHOUT_USAGE = sse(chat_chunk("Hi"), chat_chunk("!"), "[DONE]")


class InjectIncludeUsageTests(SynchronousTestCase):
    """L{inject_include_usage} asks streamed chat requests for usage, and leaves others alone."""

    def test_adds(self) -> None:
        """A streamed request without stream_options gets include_usage true."""
        body, injected = inject_include_usage(
            b'{"model": "gpt-4o", "stream": true, "messages": []}'
        )
        self.assertTrue(injected)
        self.assertEqual(
            json.loads(body),
            {
                "model": "gpt-4o",
                "stream": True,
                "messages": [],
                "stream_options": {"include_usage": True},
            },
        )

    def test_keeps_other_options(self) -> None:
        """Other stream_options survive, and an explicit false is turned on."""
        body, injected = inject_include_usage(
            b'{"stream": true, "stream_options": '
            b'{"include_obfuscation": false, "include_usage": false}}'
        )
        self.assertTrue(injected)
        self.assertEqual(
            json.loads(body)["stream_options"],
            {"include_obfuscation": False, "include_usage": True},
        )

    def test_non_ascii_kept_readable(self) -> None:
        """Non-ASCII text is re-encoded as UTF-8 with the same meaning."""
        original = {"stream": True, "messages": [{"content": "héllo 😀 \ud800"}]}
        body, injected = inject_include_usage(json.dumps(original).encode())
        self.assertTrue(injected)
        self.assertEqual(json.loads(body)["messages"], original["messages"])

    def test_unchanged(self) -> None:
        """Bodies that do not stream, already ask, or are not JSON objects come back as is."""
        for body in (
            b'{"model": "gpt-4o", "messages": []}',
            b'{"stream": false}',
            b'{"stream": "true"}',
            b'{"stream": true, "stream_options": {"include_usage": true}}',
            b'{"stream": true, "stream_options": "yes"}',
            b'{"stream": true,',
            b"[1, 2]",
            b"",
            b"\xff\xfe garbage",
            b"[" * 100000,
        ):
            result, injected = inject_include_usage(body)
            self.assertFalse(injected, body[:40])
            self.assertIs(result, body)


class UsageChunkFilterTests(SynchronousTestCase):
    """L{UsageChunkFilter} removes exactly the injected usage chunk and delays nothing else."""

    def expected_without_usage(self, body: bytes, eol: bytes) -> bytes:
        usage_event = b"data: " + json.dumps(chat_chunk(None, USAGE)).encode() + eol + eol
        self.assertIn(usage_event, body)
        return body.replace(usage_event, b"")

    def test_every_split_point(self) -> None:
        """
        Cut anywhere in two (even inside a CRLF), the output is the input minus
        the usage event, byte for byte, for LF, CRLF and CR line endings.
        """
        for eol in ("\n", "\r\n", "\r"):
            body = sse(": hi", chat_chunk("Hi"), chat_chunk(None, USAGE), "[DONE]", eol=eol)
            body = body.replace(b"data: : hi", b": hi")
            expected = self.expected_without_usage(body, eol.encode())
            for cut in range(len(body) + 1):
                usage_filter = UsageChunkFilter()
                out = usage_filter.filter(body[:cut]) + usage_filter.filter(body[cut:])
                self.assertEqual(out + usage_filter.flush(), expected, (eol, cut))

    def test_byte_at_a_time(self) -> None:
        """Fed one byte at a time, the output is still the input minus the usage event."""
        for eol in ("\n", "\r\n", "\r"):
            body = sse(chat_chunk("Hi"), chat_chunk(None, USAGE), "[DONE]", eol=eol)
            usage_filter = UsageChunkFilter()
            out = b"".join(usage_filter.filter(body[i : i + 1]) for i in range(len(body)))
            self.assertEqual(
                out + usage_filter.flush(), self.expected_without_usage(body, eol.encode())
            )

    def test_holds_nothing_complete(self) -> None:
        """Once an event's blank line has arrived, the event has been passed on."""
        first = sse(chat_chunk("Hi"))
        usage_filter = UsageChunkFilter()
        self.assertEqual(usage_filter.filter(first[:-1]), b"")
        self.assertEqual(usage_filter.filter(first[-1:]), first)
        self.assertEqual(usage_filter.filter(b": ping\n"), b": ping\n")
        self.assertEqual(usage_filter.filter(b"data: [DO"), b"")
        self.assertEqual(usage_filter.flush(), b"data: [DO")

    def test_keeps_azure_first_chunk(self) -> None:
        """Azure's first chunk has no choices but no usage either: it is kept."""
        azure_first = {"id": "", "model": "", "choices": [], "prompt_filter_results": []}
        body = sse(azure_first, chat_chunk("Hi"), "[DONE]")
        usage_filter = UsageChunkFilter()
        self.assertEqual(usage_filter.filter(body) + usage_filter.flush(), body)

    def test_keeps_usage_on_chunk_with_choices(self) -> None:
        """A chunk that carries usage and also content is the client's, so it is kept."""
        body = sse(chat_chunk("Hi", USAGE), "[DONE]")
        usage_filter = UsageChunkFilter()
        self.assertEqual(usage_filter.filter(body), body)

    def test_removes_only_one(self) -> None:
        """Only the first usage-only chunk is removed."""
        body = sse(chat_chunk(None, USAGE), chat_chunk(None, USAGE))
        usage_filter = UsageChunkFilter()
        self.assertEqual(usage_filter.filter(body), sse(chat_chunk(None, USAGE)))

    def test_usage_split_over_data_lines(self) -> None:
        """
        A usage object whose JSON is spread over several data lines (legal
        SSE) is still read, and still removed, when whole events arrive one
        chunk at a time (chunks the parser and filter otherwise pass over).
        """
        usage_event = (
            b'data: {"id":"c","model":"gpt-4o-mini","choices":[],"usage"\n'
            b'data: :\ndata: {"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}\n\n'
        )
        body = sse(chat_chunk("Hi"), chat_chunk("there")) + usage_event + sse("[DONE]")
        events = [event + b"\n\n" for event in body.split(b"\n\n")[:-1]]
        parser = make_usage_parser(
            "openai",
            "/v1/chat/completions",
            status_code=200,
            content_type="text/event-stream",
            request_model="gpt-4o-mini",
        )
        usage = run(parser, body, [len(event) for event in events])
        self.assertEqual((usage.usage_status, usage.input_tokens), (COMPLETE, 7))
        self.assertEqual(usage.output_tokens, 3)
        usage_filter = UsageChunkFilter()
        out = b"".join(usage_filter.filter(event) for event in events) + usage_filter.flush()
        self.assertEqual(out, body.replace(usage_event, b""))


class OpenAITests(SynchronousTestCase):
    """OpenAI and Azure shapes the vectors do not cover."""

    def test_azure_stream(self) -> None:
        """Azure's first chunk (model "", no choices, no usage) gives neither model nor usage."""
        first = {"id": "", "model": "", "choices": [], "created": 0, "prompt_filter_results": []}
        body = sse(
            first,
            chat_chunk("Hi", model="gpt-4o-2024-11-20"),
            chat_chunk(None, USAGE, "gpt-4o-2024-11-20"),
            "[DONE]",
        )
        parser = make_usage_parser(
            "azure",
            "/openai/deployments/my-dep/chat/completions?api-version=2024-10-21",
            status_code=200,
            content_type=SSE,
            request_model=None,
        )
        usage = run(parser, body)
        self.assertEqual((usage.usage_status, usage.model), (COMPLETE, "gpt-4o-2024-11-20"))
        self.assertEqual((usage.input_tokens, usage.output_tokens), (10, 5))

    def test_cache_write_tokens(self) -> None:
        """GPT-5.6 cache writes are a slice of the prompt, taken out of the uncached count."""
        usage = usage_from_body(
            {
                "model": "gpt-5.6-sol",
                "usage": {
                    "prompt_tokens": 100,
                    "completion_tokens": 1,
                    "prompt_tokens_details": {"cached_tokens": 30, "cache_write_tokens": 50},
                },
            },
            None,
        )
        self.assertEqual((usage.cache_creation_tokens, usage.uncached_input_tokens), (50, 20))

    def test_responses_incomplete_and_failed(self) -> None:
        """
        response.incomplete carries final usage; response.failed with null
        usage leaves it unknown.  The tier comes from the terminal event only.
        """
        created = (
            "response.created",
            {
                "type": "response.created",
                "response": {"model": "gpt-5", "service_tier": "auto", "usage": None},
            },
        )
        usage_obj = {
            "input_tokens": 7,
            "output_tokens": 3,
            "output_tokens_details": {"reasoning_tokens": 2},
        }
        incomplete = (
            "response.incomplete",
            {
                "type": "response.incomplete",
                "response": {"model": "gpt-5", "service_tier": "flex", "usage": usage_obj},
            },
        )
        failed = (
            "response.failed",
            {"type": "response.failed", "response": {"model": "gpt-5", "usage": None}},
        )
        parser = make_usage_parser(
            "openai", "/v1/responses", status_code=200, content_type=SSE, request_model="gpt-5"
        )
        usage = run(parser, sse(created, incomplete))
        self.assertEqual((usage.usage_status, usage.service_tier), (COMPLETE, "flex"))
        self.assertEqual(
            (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens), (7, 3, 2)
        )
        parser = make_usage_parser(
            "openai", "/v1/responses", status_code=200, content_type=SSE, request_model="gpt-5"
        )
        usage = run(parser, sse(created, failed))
        self.assertEqual(
            (usage.usage_status, usage.input_tokens, usage.service_tier),
            (MISSING_STREAM_TRUNCATED, None, None),
        )

    def test_last_usage_wins(self) -> None:
        """If several chunks carry usage, the last one is the total."""
        body = sse(
            chat_chunk("a", {"prompt_tokens": 10, "completion_tokens": 1}),
            chat_chunk("b", USAGE),
            "[DONE]",
        )
        parser = make_usage_parser(
            "openai", "/v1/chat/completions", status_code=200, content_type=SSE, request_model=None
        )
        self.assertEqual(run(parser, body).output_tokens, 5)


def anthropic_stream(
    *deltas: dict[str, Any], start_usage: dict[str, Any] | None = None, end: bool = True
) -> bytes:
    start_usage = start_usage or {
        "input_tokens": 25,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }
    events: list[Any] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {"model": "claude-sonnet-4-5-20250929", "usage": start_usage},
            },
        ),
        ("ping", {"type": "ping"}),
    ]
    events += [
        ("message_delta", {"type": "message_delta", "delta": {}, "usage": usage})
        for usage in deltas
    ]
    if end:
        events.append(("message_stop", {"type": "message_stop"}))
    return sse(*events)


def anthropic_parser() -> Any:
    return make_usage_parser(
        "anthropic",
        "/v1/messages",
        status_code=200,
        content_type=SSE,
        request_model="claude-sonnet-4-5",
    )


class AnthropicTests(SynchronousTestCase):
    """Anthropic stream merging and normalisation beyond the vectors."""

    def test_server_tool_input_growth(self) -> None:
        """
        With server tools, message_delta repeats cumulative input that grew
        during the turn: the last value wins, nothing is summed, and absent
        fields keep their earlier value.
        """
        body = anthropic_stream(
            {
                "input_tokens": 5000,
                "output_tokens": 40,
                "server_tool_use": {"web_search_requests": 1},
            },
            {
                "input_tokens": 10682,
                "cache_read_input_tokens": 100,
                "output_tokens": 510,
                "server_tool_use": {"web_search_requests": 2},
                "cache_creation_input_tokens": None,
            },
        )
        usage = run(anthropic_parser(), body)
        self.assertEqual(usage.usage_status, COMPLETE)
        self.assertEqual(
            (usage.input_tokens, usage.cached_tokens, usage.output_tokens), (10782, 100, 510)
        )
        self.assertEqual(usage.web_search_requests, 2)
        self.assertEqual((usage.raw or {}).get("input_tokens"), 10682)

    def test_no_ttl_split_counts_as_5m(self) -> None:
        """Cache writes without a TTL split, or beyond it, are counted as 5-minute writes."""
        body = anthropic_stream(
            {"output_tokens": 9},
            start_usage={"input_tokens": 1, "cache_creation_input_tokens": 300, "output_tokens": 1},
        )
        usage = run(anthropic_parser(), body)
        self.assertEqual((usage.cache_creation_5m_tokens, usage.cache_creation_1h_tokens), (300, 0))
        body = anthropic_stream(
            {"output_tokens": 9},
            start_usage={
                "input_tokens": 1,
                "cache_creation_input_tokens": 300,
                "output_tokens": 1,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 0,
                    "ephemeral_1h_input_tokens": 200,
                },
            },
        )
        usage = run(anthropic_parser(), body)
        self.assertEqual(
            (usage.cache_creation_5m_tokens, usage.cache_creation_1h_tokens), (100, 200)
        )
        self.assertEqual(usage.input_tokens, 301)

    def test_error_event_mid_stream(self) -> None:
        """An error event before any message_delta leaves input known and output unknown."""
        body = anthropic_stream(end=False) + sse(
            (
                "error",
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
            )
        )
        usage = run(anthropic_parser(), body)
        self.assertEqual(
            (usage.usage_status, usage.input_tokens, usage.output_tokens),
            (PARTIAL_STREAM_TRUNCATED, 25, None),
        )

    def test_cut_after_delta(self) -> None:
        """Cut after message_delta but before message_stop, the counts are kept as a lower bound."""
        usage = run(
            anthropic_parser(), anthropic_stream({"output_tokens": 77}, end=False), complete=False
        )
        self.assertEqual((usage.usage_status, usage.output_tokens), (PARTIAL_STREAM_TRUNCATED, 77))

    def test_thinking_tokens(self) -> None:
        """Reported thinking tokens are the reasoning slice of output, not added to it."""
        body = anthropic_stream(
            {"output_tokens": 500, "output_tokens_details": {"thinking_tokens": 300}}
        )
        usage = run(anthropic_parser(), body)
        self.assertEqual((usage.output_tokens, usage.reasoning_tokens), (500, 300))


GEMINI_CHUNKS = [
    {
        "candidates": [{"content": {"parts": [{"text": "a"}]}}],
        "usageMetadata": {"promptTokenCount": 9, "thoughtsTokenCount": 16},
        "modelVersion": "gemini-2.5-pro",
    },
    {"candidates": [{"content": {"parts": [{"text": "b"}]}}]},
    {
        "candidates": [{"content": {"parts": [{"text": "c"}]}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 9,
            "candidatesTokenCount": 37,
            "thoughtsTokenCount": 16,
            "toolUsePromptTokenCount": 100,
            "cachedContentTokenCount": 4,
        },
    },
]
GEMINI_ARRAY = ("[" + "\n,\r\n".join(json.dumps(c) for c in GEMINI_CHUNKS) + "\n]").encode()
GEMINI_STREAM_PATH = "/v1beta/models/gemini-2.5-pro:streamGenerateContent"


def gemini_parser(path: str = GEMINI_STREAM_PATH, content_type: str = JSON) -> Any:
    return make_usage_parser(
        "gemini", path, status_code=200, content_type=content_type, request_model=None
    )


class GeminiTests(SynchronousTestCase):
    """Gemini streams beyond the vectors, above all the JSON array sent without alt=sse."""

    def test_json_array_stream(self) -> None:
        """
        A streamGenerateContent answer without alt=sse is one JSON array; fed
        whole, bytewise or in random chunks it gives the last running totals.
        """
        rng = random.Random(5)
        for chunks in (None, [1] * len(GEMINI_ARRAY), [rng.randint(1, 30) for _ in range(40)]):
            usage = run(gemini_parser(), GEMINI_ARRAY, chunks)
            self.assertEqual(usage.usage_status, COMPLETE)
            self.assertEqual(usage.model, "gemini-2.5-pro")
            self.assertEqual(
                (usage.input_tokens, usage.tool_use_prompt_tokens, usage.cached_tokens),
                (109, 100, 4),
            )
            self.assertEqual((usage.output_tokens, usage.reasoning_tokens), (53, 16))
            self.assertEqual(usage.uncached_input_tokens, 105)

    def test_sse_same_as_array(self) -> None:
        """The same chunks as server-sent events (CRLF) give the same usage."""
        body = sse(*GEMINI_CHUNKS, eol="\r\n")
        usage = run(gemini_parser(GEMINI_STREAM_PATH + "?alt=sse", "text/event-stream"), body)
        self.assertEqual(
            (usage.usage_status, usage.input_tokens, usage.output_tokens), (COMPLETE, 109, 53)
        )

    def test_truncated_array(self) -> None:
        """An array cut before the chunk with finishReason gives a partial lower bound."""
        cut = GEMINI_ARRAY.index(b'{"candidates": [{"content": {"parts": [{"text": "c"')
        usage = run(gemini_parser(), GEMINI_ARRAY[: cut + 20], complete=False)
        self.assertEqual(
            (usage.usage_status, usage.input_tokens, usage.output_tokens),
            (PARTIAL_STREAM_TRUNCATED, 9, 16),
        )

    def test_model_from_path(self) -> None:
        """Without modelVersion, the model comes from the URL path (Vertex too)."""
        chunk = {"candidates": [{"finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 1}}
        path = (
            "/v1/projects/p/locations/us-central1/publishers/google/models/"
            "gemini-2.5-flash:streamGenerateContent"
        )
        usage = run(gemini_parser(path), json.dumps([chunk]).encode())
        self.assertEqual((usage.usage_status, usage.model), (COMPLETE, "gemini-2.5-flash"))

    def test_audio_modalities(self) -> None:
        """Fresh audio input and audio output come from the modality details."""
        body = {
            "usageMetadata": {
                "promptTokenCount": 100,
                "cachedContentTokenCount": 50,
                "candidatesTokenCount": 30,
                "promptTokensDetails": [
                    {"modality": "AUDIO", "tokenCount": 60},
                    {"modality": "TEXT", "tokenCount": 40},
                ],
                "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 20}],
                "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 25}],
            }
        }
        path = "/v1beta/models/gemini-2.5-flash:generateContent"
        usage = run(gemini_parser(path), json.dumps(body).encode())
        self.assertEqual((usage.input_audio_tokens, usage.output_audio_tokens), (40, 25))

    def test_blocked_prompt_is_final(self) -> None:
        """A blocked prompt ends the stream without finishReason, and its usage is complete."""
        chunk = {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 8},
        }
        usage = run(gemini_parser(), json.dumps([chunk]).encode())
        self.assertEqual(
            (usage.usage_status, usage.input_tokens, usage.output_tokens), (COMPLETE, 8, 0)
        )


GARBAGE = [
    b"<html><body>502 Bad Gateway</body></html>",
    b'{"usage": {"prompt_tokens": 1',
    b"",
    b"\x00\xff\xfe\x80" * 50,
    b"[" * 100000,
    b'"just a string"',
    b"null",
    b'{"usage": "lots"}',
]


class RobustnessTests(SynchronousTestCase):
    """Bodies that are not what the provider should send never raise."""

    def all_parsers(self, content_type: str) -> list[Any]:
        paths = [
            ("openai", "/v1/chat/completions"),
            ("openai", "/v1/responses"),
            ("azure", "/openai/deployments/d/embeddings?api-version=2024-10-21"),
            ("anthropic", "/v1/messages"),
            ("gemini", "/v1beta/models/gemini-2.5-pro:generateContent"),
            ("gemini", GEMINI_STREAM_PATH),
            ("gemini", GEMINI_STREAM_PATH + "?alt=sse"),
        ]
        return [
            make_usage_parser(
                provider, path, status_code=200, content_type=content_type, request_model="m"
            )
            for provider, path in paths
        ]

    def test_garbage_is_unparseable(self) -> None:
        """Garbage, HTML or truncated JSON as a complete body is unparseable: counts unknown."""
        for content_type in (JSON, SSE):
            for body in GARBAGE:
                if not body:
                    continue
                for parser in self.all_parsers(content_type):
                    usage = run(parser, body)
                    self.assertEqual(
                        usage.usage_status, UNPARSEABLE, (content_type, body[:30], parser)
                    )
                    self.assertIsNone(usage.input_tokens)
                    self.assertEqual(usage.model, "m")

    def test_mutated_vectors_never_raise(self) -> None:
        """Vector bodies with values swapped for JSON of other types never make parsers raise."""
        rng = random.Random(99)
        odd_values = [None, "x", -5, 1.5, True, [], {}, [1, {"a": None}], {"usage": None}]

        def mutate(value: Any) -> Any:
            if rng.random() < 0.15:
                return rng.choice(odd_values)
            if isinstance(value, dict):
                return {key: mutate(item) for key, item in value.items()}
            if isinstance(value, list):
                return [mutate(item) for item in value]
            return value

        for name, vector in load_vectors():
            text = vector["response_body"]
            for _ in range(30):
                if "data:" in text:
                    lines = []
                    for line in text.split("\n"):
                        # Not JSON, or the cut-off last line of a truncated vector: kept.
                        with contextlib.suppress(ValueError):
                            line = "data: " + json.dumps(mutate(json.loads(line[6:])))
                        lines.append(line)
                    body = "\n".join(lines).encode()
                else:
                    body = json.dumps(mutate(json.loads(text))).encode()
                usage = run(parser_for(name, vector), body)
                self.assertIsInstance(usage, Usage)

    def test_large_body_read(self) -> None:
        """
        A non-streamed body of any size has its usage read; what the gateway
        does not need (here 40 MiB of embeddings) is passed over, not held.
        """
        parser = JSONBodyParser(usage_from_body, "text-embedding-3-large")
        parser.feed(b'{"object": "list", "data": [')
        chunk = b'{"object": "embedding", "index": 0, "embedding": [' + b"0.0123," * 9000 + b"1]},"
        for _ in range(40 * 2**20 // len(chunk)):
            parser.feed(chunk)
        parser.feed(b'{}], "model": "text-embedding-3-large", "usage": {"prompt_tokens": 8}}')
        self.assertEqual(set(parser._members.members), {"object", "model", "usage"})
        usage = parser.finish()
        self.assertEqual((usage.usage_status, usage.input_tokens), (COMPLETE, 8))

    def test_oversized_event_unparseable(self) -> None:
        """A stream whose first event exceeds the event cap is unparseable."""
        parser = make_usage_parser(
            "openai", "/v1/chat/completions", status_code=200, content_type=SSE, request_model="m"
        )
        chunk = b"x" * (1 << 20)
        parser.feed(b"data: ")
        for _ in range(9):
            parser.feed(chunk)
        self.assertEqual(parser.finish().usage_status, UNPARSEABLE)


class StatusTests(SynchronousTestCase):
    """The usage_status of cut streams, errors, and endpoints without usage."""

    def test_cut_streams(self) -> None:
        """finish(complete=False) gives each provider's truncated status."""
        openai = make_usage_parser(
            "openai",
            "/v1/chat/completions",
            status_code=200,
            content_type=SSE,
            request_model="gpt-4o",
        )
        half = STREAM_WITH_USAGE[: len(STREAM_WITH_USAGE) // 3]
        usage = run(openai, half, complete=False)
        self.assertEqual(
            (usage.usage_status, usage.input_tokens, usage.model),
            (MISSING_STREAM_TRUNCATED, None, "gpt-4o-2024-08-06"),
        )

        usage = run(anthropic_parser(), anthropic_stream(end=False), complete=False)
        self.assertEqual(
            (usage.usage_status, usage.input_tokens, usage.output_tokens),
            (PARTIAL_STREAM_TRUNCATED, 25, None),
        )

        usage = run(gemini_parser(), GEMINI_ARRAY[:200], complete=False)
        self.assertEqual(usage.usage_status, PARTIAL_STREAM_TRUNCATED)

        for provider, path in (("openai", "/v1/chat/completions"), ("anthropic", "/v1/messages")):
            parser = make_usage_parser(
                provider, path, status_code=200, content_type=JSON, request_model="m"
            )
            self.assertEqual(
                run(parser, b'{"id": "x", "us', complete=False).usage_status,
                MISSING_STREAM_TRUNCATED,
            )

        # A cut before any byte arrived is truncated, not unparseable.
        nothing = make_usage_parser(
            "anthropic", "/v1/messages", status_code=200, content_type=SSE, request_model="m"
        )
        self.assertEqual(nothing.finish(complete=False).usage_status, MISSING_STREAM_TRUNCATED)

    def test_usage_chunk_then_cut(self) -> None:
        """The usage chunk covers the whole request: a cut after it still gives complete usage."""
        parser = make_usage_parser(
            "openai", "/v1/chat/completions", status_code=200, content_type=SSE, request_model="m"
        )
        usage = run(parser, STREAM_WITH_USAGE[: -len(b"data: [DONE]\n\n")], complete=False)
        self.assertEqual((usage.usage_status, usage.input_tokens), (COMPLETE, 10))

    def test_not_requested(self) -> None:
        """A stream not asked for usage that has none is missing_not_requested, cut or not."""
        for complete in (True, False):
            parser = make_usage_parser(
                "openai",
                "/v1/chat/completions",
                status_code=200,
                content_type=SSE,
                request_model="m",
                usage_requested=False,
            )
            usage = run(parser, STREAM_WITHOUT_USAGE, complete=complete)
            self.assertEqual(
                (usage.usage_status, usage.output_tokens), (MISSING_NOT_REQUESTED, None)
            )

    def test_requested_but_absent(self) -> None:
        """A stream asked for usage that ends without it is missing_stream_truncated."""
        parser = make_usage_parser(
            "openai", "/v1/completions", status_code=200, content_type=SSE, request_model="m"
        )
        self.assertEqual(run(parser, STREAM_WITHOUT_USAGE).usage_status, MISSING_STREAM_TRUNCATED)

    def test_errors_not_billed(self) -> None:
        """Non-2xx answers are error_not_billed with zero counts, whatever the body."""
        cases = [
            ("openai", "/v1/chat/completions", 500, "gpt-4o", "gpt-4o"),
            ("azure", "/openai/deployments/d/chat/completions", 401, None, None),
            ("anthropic", "/v1/messages", 529, "claude-x", "claude-x"),
            (
                "gemini",
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                400,
                None,
                "gemini-2.5-flash",
            ),
            ("openai", "/v1/responses", 302, "gpt-5", "gpt-5"),
        ]
        for provider, path, status, request_model, model in cases:
            for body in GARBAGE + [STREAM_WITH_USAGE]:
                parser = make_usage_parser(
                    provider,
                    path,
                    status_code=status,
                    content_type=SSE,
                    request_model=request_model,
                )
                usage = run(parser, body)
                self.assertEqual((usage.usage_status, usage.model), (ERROR_NOT_BILLED, model))
                self.assertEqual(
                    (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens), (0, 0, 0)
                )
                self.assertEqual(usage.uncached_input_tokens, 0)

    def test_not_applicable(self) -> None:
        """Endpoints without token usage get a parser that reads nothing: not_applicable."""
        for provider, path in (
            ("openai", "/v1/models"),
            ("openai", "/v1/responses/resp_123"),
            ("azure", "/openai/deployments?api-version=2024-10-21"),
            ("anthropic", "/v1/messages/count_tokens"),
            ("anthropic", "/v1/models"),
            ("gemini", "/v1beta/models/gemini-2.5-pro:countTokens"),
            ("gemini", "/v1beta/models"),
        ):
            parser = make_usage_parser(
                provider, path, status_code=200, content_type=JSON, request_model=None
            )
            parser.feed(b"x" * 1000)
            self.assertFalse(hasattr(parser, "_chunks"))
            usage = parser.finish()
            self.assertEqual(
                (usage.usage_status, usage.input_tokens, usage.output_tokens),
                (NOT_APPLICABLE, None, None),
            )

    def test_unknown_provider(self) -> None:
        """An unknown provider name is a programming error."""
        self.assertRaises(
            ValueError,
            make_usage_parser,
            "mistral",
            "/v1/chat/completions",
            status_code=200,
            content_type=JSON,
            request_model=None,
        )


class FastPathTests(SynchronousTestCase):
    """Chunks skipped without decoding never hide usage."""

    def test_usage_found_among_skipped_chunks(self) -> None:
        """
        Content that quotes "usage": {...} (escaped inside a JSON string) is
        skipped safely, and a usage chunk with unusual spacing is still read,
        by the parser and by the filter that hides it.
        """
        from majordomo.usage.choose import make_usage_parser
        from majordomo.usage.openai import UsageChunkFilter

        chunk = (
            'data: {"model": "gpt-4o-2024-08-06", "usage": null, "choices": [{"delta": '
            '{"content": "say \\"usage\\": {\\"x\\": 1}"}}]}\n\n'
        )
        usage = (
            'data: {"model": "gpt-4o-2024-08-06", "choices": [], "usage" :  {"prompt_tokens": 3, '
            '"completion_tokens": 4, "total_tokens": 7}}\n\n'
        )
        body = (chunk * 3 + usage + "data: [DONE]\n\n").encode()
        parser = make_usage_parser(
            "openai",
            "/v1/chat/completions",
            status_code=200,
            content_type="text/event-stream",
            request_model="gpt-4o",
        )
        parser.feed(body)
        result = parser.finish()
        self.assertEqual((result.input_tokens, result.output_tokens), (3, 4))
        stream_filter = UsageChunkFilter()
        shown = stream_filter.filter(body) + stream_filter.flush()
        self.assertEqual(shown, (chunk * 3 + "data: [DONE]\n\n").encode())
