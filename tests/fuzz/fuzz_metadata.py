"""
Fuzz target: L{majordomo.metadata.extract}, which turns a request's
X-Majordomo-* headers into its metadata.

The body is header lines, C{name: value}, one per LF.  With option bit 0
clear they reach C{extract} as the gateway hands them over: through
twisted.web's L{Headers}, which has already refused (with a 400) names that
are not tokens and values holding NUL, CR or LF; with it set they are passed
as raw bytes, whatever they are.

Properties: only L{MetadataError} is raised; what is returned keeps the
documented limits (at most C{MAX_HEADERS} names, each 1 to C{MAX_NAME_LENGTH}
characters, not reserved, each value a string of at most C{MAX_VALUE_BYTES}
UTF-8 bytes); every name comes from an X-Majordomo-* header and is one
C{majordomo metadata activate} takes as it is; and header
names are case-insensitive (the same headers in swapped case give the same
metadata, or the same refusal).

    .venv/bin/python tests/fuzz/fuzz_metadata.py -max_total_time=60
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import atheris
from twisted.web.http_headers import Headers, InvalidHeaderName

from tests.fuzz.harness import check, main, make_input, parse_input

with atheris.instrument_imports(include=["majordomo"]):
    from majordomo import metadata
    from majordomo.metadata import Metadata, MetadataError

RAW = 1
RawHeaders = list[tuple[bytes, Sequence[bytes]]]


def make_seed(lines: list[bytes], options: int = 0) -> bytes:
    """The input that sends these header lines."""
    return make_input(b"\n".join(lines), options)


def as_received(lines: list[tuple[bytes, bytes]]) -> RawHeaders:
    """The header lines as twisted.web would hand them on, minus those it refuses."""
    headers = Headers()
    for name, value in lines:
        if not any(byte in value for byte in b"\0\r\n"):
            with contextlib.suppress(InvalidHeaderName):
                headers.addRawHeader(name, value)
    return list(headers.getAllRawHeaders())


def extract(headers: RawHeaders) -> Metadata | str:
    """The metadata, or the refusal's message."""
    try:
        return metadata.extract(headers)
    except MetadataError as e:
        return f"refused: {e}"


def activatable(name: str) -> bool:
    """Whether C{metadata activate} takes C{name} as it is (the rule both apply)."""
    try:
        return metadata.metadata_name(name) == name
    except MetadataError:
        return False


def check_limits(found: Metadata, headers: RawHeaders) -> None:
    sent = {
        metadata.canonical(name.decode("latin-1")[len(metadata.PREFIX) :])
        for name, _ in headers
        if name.lower().startswith(metadata.PREFIX.encode())
    }
    check(len(found.raw) <= metadata.MAX_HEADERS, f"{len(found.raw)} names")
    for name, value in found.raw.items():
        check(
            isinstance(name, str) and 1 <= len(name) <= metadata.MAX_NAME_LENGTH,
            f"name {name!r}",
        )
        check(name.strip("-") and name not in metadata.RESERVED, f"name {name!r} kept")
        check(name in sent, f"name {name!r} was not sent")
        check(activatable(name), f"name {name!r} cannot be activated")
        check(
            isinstance(value, str) and len(value.encode("utf-8")) <= metadata.MAX_VALUE_BYTES,
            f"value {value!r}",
        )
    alias = found.provider_alias
    check(
        alias is None
        or (isinstance(alias, str) and len(alias.encode("utf-8")) <= metadata.MAX_VALUE_BYTES),
        f"alias {alias!r}",
    )


def test_one_input(data: bytes) -> None:
    given = parse_input(data)
    lines = [line.partition(b":")[::2] for line in given.body.split(b"\n")]
    lines = [(name, value.strip(b" \t")) for name, value in lines]
    if given.options & RAW:
        headers: RawHeaders = [(name, [value]) for name, value in lines]
        swapped: RawHeaders = [(name.swapcase(), [value]) for name, value in lines]
    else:
        headers = as_received(lines)
        swapped = as_received([(name.swapcase(), value) for name, value in lines])
    found = extract(headers)
    if isinstance(found, Metadata):
        check_limits(found, headers)
    again = extract(swapped)
    check(again == found, lambda: f"swapped case: {again!r} != {found!r}")


if __name__ == "__main__":
    main(test_one_input, "metadata")
