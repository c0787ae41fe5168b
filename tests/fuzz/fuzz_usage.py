"""
Fuzz target: every usage parser, as L{majordomo.usage.choose.make_usage_parser}
builds it for OpenAI, Azure, Anthropic and Gemini answers, streamed
(text/event-stream, Gemini's JSON array) or not.

The body's first line says what the request and the answer were:
C{<request path> <status> <content type>}; the rest is the answer's body.
Option bits 0-1 pick the provider, bit 2 says the body was cut short
(C{finish(complete=False)}), bit 3 that an OpenAI stream did not ask for usage.

Properties: no parser raises; whatever the chunking, the L{Usage} is the
same; every count is None or a whole number in 0..2**63-1, the status one of
the documented ones and the model None or a non-empty string.

    .venv/bin/python tests/fuzz/fuzz_usage.py -max_total_time=60
"""

from __future__ import annotations

import dataclasses
from typing import Any

import atheris

from tests.fuzz.harness import check, chunkings, main, make_input, parse_input

with atheris.instrument_imports(include=["majordomo"]):
    from majordomo import usage
    from majordomo.usage import COUNT_FIELDS, Usage, is_count
    from majordomo.usage.choose import make_usage_parser

PROVIDERS = (usage.OPENAI, usage.AZURE, usage.ANTHROPIC, usage.GEMINI)
# The usage_status values: the module's constants named after their value.
STATUSES = frozenset(
    value for name, value in vars(usage).items() if isinstance(value, str) and value == name.lower()
) - set(PROVIDERS)
CUT_SHORT = 4
USAGE_NOT_REQUESTED = 8


def make_seed(provider: str, path: str, status: int, content_type: str, body: bytes) -> bytes:
    """The input that replays one provider answer."""
    head = f"{path} {status} {content_type}\n".encode()
    return make_input(head + body, options=PROVIDERS.index(provider))


def describe(result: Usage) -> dict[str, Any]:
    """Every field of a Usage, raw and the invalid-count flag included."""
    return {f.name: repr(getattr(result, f.name)) for f in dataclasses.fields(result)}


def test_one_input(data: bytes) -> None:
    given = parse_input(data)
    head, _, body = given.body.partition(b"\n")
    path, _, rest = head.decode("utf-8", "replace").partition(" ")
    status, _, content_type = rest.partition(" ")
    status_code = int(status) if status.isascii() and status.isdigit() else 200

    def parse(chunks: list[bytes]) -> Usage:
        parser = make_usage_parser(
            PROVIDERS[given.options & 3],
            path,
            status_code=status_code,
            content_type=content_type,
            request_model="request-model",
            usage_requested=not given.options & USAGE_NOT_REQUESTED,
        )
        for chunk in chunks:
            parser.feed(chunk)
        return parser.finish(complete=not given.options & CUT_SHORT)

    whole = parse([body])
    for name in COUNT_FIELDS:
        value = getattr(whole, name)
        check(value is None or is_count(value), f"{name} is {value!r}")
    check(whole.usage_status in STATUSES, f"usage_status {whole.usage_status!r}")
    check(
        whole.model is None or (isinstance(whole.model, str) and whole.model),
        f"model {whole.model!r}",
    )
    expected = describe(whole)
    for how, chunks in chunkings(body, given.lengths):
        got = describe(parse(chunks))
        check(got == expected, lambda how=how, got=got: f"{how}: {got} != {expected}")


if __name__ == "__main__":
    main(test_one_input, "usage")
