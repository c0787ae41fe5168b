"""
Fuzz target: L{majordomo.web.target}, which turns a caller's request target into
the upstream URL.

The body is the request target, as bytes; option bits 0-2 pick the base URL
(the providers' defaults, loopback ones with and without a path, IPv6).

Properties: C{upstream_url} and C{check_method} raise nothing but
L{BadTarget}; a URL they give is the base URL's scheme, host and port (as both
the HTTP client and C{urllib} read it) followed by its path and then the
target unchanged, in visible ASCII, with no fragment and no C{..} segment.

    .venv/bin/python tests/fuzz/fuzz_target.py -max_total_time=60
"""

from __future__ import annotations

import contextlib
import re
from urllib.parse import unquote, urlsplit

import atheris

from tests.fuzz.harness import check, main, make_input, parse_input

with atheris.instrument_imports(include=["majordomo"]):
    from majordomo.web.target import BadTarget, check_method, upstream_url

BASE_URLS = (
    "https://api.openai.com",
    "https://api.anthropic.com",
    "https://generativelanguage.googleapis.com",
    "https://example.openai.azure.com",
    "http://127.0.0.1:4000",
    "http://upstream.test/base/v1",
    "http://[::1]:8080",
    "http://localhost:1/",
)


def make_seed(target: bytes, base: int = 0) -> bytes:
    """The input that forwards C{target} to C{BASE_URLS[base]}."""
    return make_input(target, options=base)


def test_one_input(data: bytes) -> None:
    given = parse_input(data)
    base_url = BASE_URLS[given.options & 7]
    target = given.body
    with contextlib.suppress(BadTarget):
        check_method(target)
    try:
        url = upstream_url(base_url, target)
    except BadTarget:
        return
    base = urlsplit(base_url)
    prefix = f"{base.scheme}://{base.netloc}{base.path}".encode("ascii")
    check(url == prefix + target, f"{target!r} on {base_url} -> {url!r}")
    check(re.fullmatch(rb"[\x21-\x7e]+", url) and b"#" not in url, f"{url!r} not visible ASCII")
    parts = urlsplit(url.decode("ascii"))
    check(
        (parts.scheme, parts.hostname, parts.port) == (base.scheme, base.hostname, base.port),
        f"{target!r} on {base_url} leaves for {parts.scheme}://{parts.netloc}",
    )
    segments = re.split(r"[/\\]", unquote(parts.path))
    check(".." not in segments, f"{url!r} climbs out of the base path")


if __name__ == "__main__":
    main(test_one_input, "target")
