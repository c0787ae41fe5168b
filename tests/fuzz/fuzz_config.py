"""
Fuzz target: L{majordomo.config.load_config}, a YAML file plus
C{MAJORDOMO_*} environment overrides.

The body is the file's bytes, then, after a line C{#env}, environment
lines C{key=value}: C{server.port=80} sets C{MAJORDOMO_SERVER_PORT}.  Values
are decoded as Python decodes a real environment (UTF-8, surrogateescape).

Properties: whatever the bytes and the values, C{load_config} returns a
configuration or raises L{ConfigError} whose message is one line, no longer
than a few times the input (a value is quoted, not expanded: YAML aliases can
make a 240-byte file a value of millions of elements); nothing else.  A
configuration it returns holds only text every library can take (UTF-8, no
NUL), and each provider base URL is empty or an ASCII http(s) URL with a
host, no user name, query or fragment.

    .venv/bin/python tests/fuzz/fuzz_config.py -max_total_time=60
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any
from urllib.parse import urlsplit

import atheris

from tests.fuzz.harness import check, main, make_input, parse_input

with atheris.instrument_imports(include=["majordomo"]):
    from majordomo.config import Config, ConfigError, load_config
    from majordomo.providers import PROVIDERS

ENV_MARK = b"\n#env\n"
WORK = tempfile.mkdtemp(prefix="fuzz-config-")
CONFIG = os.path.join(WORK, "majordomo.yaml")


def make_seed(yaml: bytes, env: dict[str, str] | None = None) -> bytes:
    """The input that loads C{yaml} with C{env} (keys spelt C{server.port})."""
    lines = [
        f"{key}={value}".encode("utf-8", "surrogateescape") for key, value in (env or {}).items()
    ]
    return make_input(yaml + (ENV_MARK + b"\n".join(lines) if lines else b""))


def environment(text: bytes) -> dict[str, str]:
    env = {}
    for line in text.split(b"\n"):
        key, _, value = line.partition(b"=")
        name = "MAJORDOMO_" + key.decode("ascii", "replace").replace(".", "_").upper()
        env[name] = value.decode("utf-8", "surrogateescape")
    return env


def settings(section: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf setting of a configuration, by its dotted key."""
    found = {}
    for spec in dataclasses.fields(section):
        value = getattr(section, spec.name)
        if dataclasses.is_dataclass(value):
            found.update(settings(value, f"{prefix}{spec.name}."))
        else:
            found[prefix + spec.name] = value
    return found


def is_text(value: str) -> bool:
    """Whether C{value} is text every library takes: UTF-8 (no lone surrogate), no NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in value


def check_loaded(config: Config) -> None:
    for key, value in settings(config).items():
        if isinstance(value, str):
            check(is_text(value), f"{key} is {value!r}")
    for name in PROVIDERS:
        url = config.providers.base_url(name)
        if url:
            parts = urlsplit(url)
            check(
                url.isascii()
                and parts.scheme.lower() in ("http", "https")
                and parts.hostname
                and "@" not in parts.netloc
                and not (parts.query or parts.fragment or "?" in url or "#" in url),
                f"providers.{name}.base_url is {url!r}",
            )


def test_one_input(data: bytes) -> None:
    yaml, _, env = parse_input(data).body.partition(ENV_MARK)
    with open(CONFIG, "wb") as f:
        f.write(yaml)
    try:
        config = load_config(CONFIG, env=environment(env) if env else {}, cwd=WORK)
    except ConfigError as e:
        message = str(e)
        check(len(message) <= 200 + 4 * len(data), f"a message of {len(message)} characters")
        check("\n" not in message and "\r" not in message, f"several lines: {message}")
    else:
        check_loaded(config)


if __name__ == "__main__":
    main(test_one_input, "config")
