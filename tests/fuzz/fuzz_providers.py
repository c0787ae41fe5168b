"""
Fuzz target: what L{majordomo.providers} reads from a request target and
body: C{detect_provider}, C{request_facts}, C{provider_secret} and
C{redact_path}, the last standing between a provider key sent as C{?key=}
and every log line, row and spool file that holds the path.

The body's first line is the request target, as twisted.web hands it over
(bytes, read as Latin-1); the rest is the request body.

Properties: nothing raises; the provider is a known one; the model is None or
a string, C{stream} a bool; the secret is None or a string; and C{redact_path}
is idempotent and leaves no secret parameter's value in the path, neither as
C{parse_qsl} reads the result nor as text: a value that follows C{key=},
C{api_key=} or C{api-key=} at the start of a parameter (after C{?}, C{&} or
C{;}, also a stray second C{?}) is nowhere in the redacted path.

    .venv/bin/python tests/fuzz/fuzz_providers.py -max_total_time=60
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus

import atheris

from tests.fuzz.harness import check, main, make_input, parse_input

with atheris.instrument_imports(include=["majordomo"]):
    from majordomo import providers
    from majordomo.providers import secrets

SECRET_NAMES = ("key", "api_key", "api-key")
SECRET_PARAM = re.compile(r"(?i)(?<=[?&;])(?:key|api_key|api-key)=([^&;#?]*)")


def make_seed(target: str, body: bytes = b"") -> bytes:
    """The input that sends C{body} to C{target}."""
    return make_input(target.encode("latin-1") + b"\n" + body)


def json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def check_redacted(path: str) -> None:
    redacted = secrets.redact_path(path)
    check(isinstance(redacted, str), f"redact_path gave {redacted!r}")
    check(secrets.redact_path(redacted) == redacted, f"not idempotent: {redacted!r}")
    query = redacted.partition("?")[2]
    for name, value in parse_qsl(query, keep_blank_values=True):
        check(
            name.lower() not in SECRET_NAMES or value == "REDACTED",
            f"{path!r} -> {redacted!r} keeps {name}={value}",
        )
    _, mark, after = path.partition("?")
    found = SECRET_PARAM.findall(mark + after)
    raw_rest = SECRET_PARAM.sub("", mark + after)
    rest = unquote(raw_rest)
    for value in found:
        # A value that also occurs elsewhere in the path (in another name,
        # raw or decoded: "k%65yCR3T" holds "5yCR3T") cannot be told apart.
        hidden = (
            value.isalnum()
            and len(value) >= 4
            and value not in "REDACTED"
            and value not in raw_rest
            and value not in rest
            and value not in unquote_plus(rest)
            and value not in path.partition("?")[0]
        )
        check(not hidden or value not in redacted, f"{path!r} -> {redacted!r} keeps {value!r}")


def test_one_input(data: bytes) -> None:
    target, _, body = parse_input(data).body.partition(b"\n")
    path = target.decode("latin-1")
    provider = providers.detect_provider(path)
    check(provider in providers.PROVIDERS, f"provider {provider!r}")
    for name in providers.PROVIDERS:
        facts = providers.request_facts(name, path, json_or_none(body))
        check(facts.model is None or isinstance(facts.model, str), f"model {facts.model!r}")
        check(isinstance(facts.stream, bool), f"stream {facts.stream!r}")
    query = path.split("?", 1)[1] if "?" in path else ""
    secret = secrets.provider_secret(provider, {}, query)
    check(secret is None or isinstance(secret, str), f"secret {secret!r}")
    check_redacted(path)


if __name__ == "__main__":
    main(test_one_input, "providers")
