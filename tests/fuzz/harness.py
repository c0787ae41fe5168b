"""
What every fuzz target shares: how a fuzzer's input is cut into the options,
the chunking and the body a target feeds, the ways a body is chunked, the
check that reports a broken property, and L{main}, which starts libFuzzer
with this project's defaults.

An input is C{[options][k][k chunk lengths][body]}: byte 0 is the target's
options, byte 1 modulo 9 says how many chunk lengths follow (each length is
the byte plus one, used in turn until the body is used up), and the rest is
the body.  A real provider answer with two zero bytes in front is therefore a
valid input, which is how the seeds in C{seeds/} are made (L{make_input}).

This module must not import C{majordomo}: a target imports it inside
C{atheris.instrument_imports()} so that libFuzzer sees its coverage.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")

# Bodies up to this size are also fed one byte at a time.
BYTEWISE_LIMIT = 1024

# libFuzzer flags every target runs with unless the command line says otherwise:
# an input that takes a second is a freeze, one that needs 1 GiB is a leak.
DEFAULT_FLAGS = {"-timeout": "1", "-rss_limit_mb": "1024"}


@dataclass(frozen=True)
class FuzzInput:
    """One fuzzer input, cut into its parts."""

    options: int
    lengths: bytes
    body: bytes


def parse_input(data: bytes) -> FuzzInput:
    """Cut C{data} as the module docstring describes."""
    options = data[0] if data else 0
    count = data[1] % 9 if len(data) > 1 else 0
    return FuzzInput(options, data[2 : 2 + count], data[2 + count :])


def make_input(body: bytes, options: int = 0, lengths: bytes = b"") -> bytes:
    """The input L{parse_input} cuts into C{options}, C{lengths} and C{body}."""
    if len(lengths) > 8:
        raise ValueError("at most 8 chunk lengths")
    return bytes([options, len(lengths)]) + lengths + body


def cut(body: bytes, lengths: bytes) -> list[bytes]:
    """C{body} in chunks of the given lengths (each byte plus one), used in turn."""
    if not lengths:
        return [body]
    chunks, i, turn = [], 0, 0
    while i < len(body):
        size = lengths[turn % len(lengths)] + 1
        chunks.append(body[i : i + size])
        i += size
        turn += 1
    return chunks


def after_each_cr(body: bytes) -> list[bytes]:
    """C{body} cut just after every CR, so that every CRLF is split in two."""
    pieces = body.split(b"\r")
    return [piece + b"\r" for piece in pieces[:-1]] + [pieces[-1]]


def chunkings(body: bytes, lengths: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """
    The ways a target feeds C{body}, each with a name for the report: whole,
    cut at the fuzzer's lengths, cut after every CR, and (when short) one byte
    at a time.  Empty chunks are left out, as a transport never delivers them.
    """
    yield "whole", [body]
    if lengths:
        yield f"cut at lengths {list(lengths)}", cut(body, lengths)
    if b"\r" in body:
        yield "cut after every CR", [c for c in after_each_cr(body) if c]
    if 1 < len(body) <= BYTEWISE_LIMIT:
        yield "one byte at a time", [body[i : i + 1] for i in range(len(body))]


class PropertyBroken(AssertionError):
    """A fuzz target found its property false (libFuzzer reports it as a crash)."""


def check(condition: object, message: str | Callable[[], str]) -> None:
    """Raise L{PropertyBroken} with C{message} unless C{condition} holds."""
    if not condition:
        raise PropertyBroken(message() if callable(message) else message)


def seeds_dir(target: str) -> str:
    """The committed seed corpus of C{target} (e.g. C{"sse"} for fuzz_sse.py)."""
    return os.path.join(SEEDS, target)


def libfuzzer_argv(argv: list[str], target: str) -> list[str]:
    """
    C{argv} with L{DEFAULT_FLAGS} added where not given and, when it names no
    corpus or input, a fresh working corpus plus the target's seeds (new
    inputs go to the first corpus directory, which must not be the seeds).
    """
    given = {arg.split("=", 1)[0] for arg in argv[1:] if arg.startswith("-")}
    flags = [f"{name}={value}" for name, value in DEFAULT_FLAGS.items() if name not in given]
    paths = [arg for arg in argv[1:] if not arg.startswith("-")]
    extra = [] if paths else [tempfile.mkdtemp(prefix=f"fuzz-{target}-"), seeds_dir(target)]
    return [argv[0], *flags, *argv[1:], *extra]


def main(test_one_input: Callable[[bytes], None], target: str) -> None:
    """Run C{test_one_input} under libFuzzer with the command line's flags."""
    import atheris

    argv = libfuzzer_argv(sys.argv, target)
    print("libFuzzer arguments:", " ".join(argv[1:]), file=sys.stderr, flush=True)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
