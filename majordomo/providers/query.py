# -*- test-case-name: tests.test_providers -*-
"""
The query string of a request target, read one way everywhere: split from the
path at the first C{?}, and its parameters as C{parse_qsl} reads them
(percent-decoded, C{+} as space, empty values dropped).

Redaction reads the query differently on purpose: it must find a secret however
any parser would split it (see L{majordomo.providers.secrets.redact_path}).
"""

from __future__ import annotations

from urllib.parse import parse_qsl


def split_target(target: str) -> tuple[str, str]:
    """The path of a request target and its query (C{""} when there is no C{?})."""
    path, _, query = target.partition("?")
    return path, query


def query_pairs(query: str) -> list[tuple[str, str]]:
    """The query's parameters in order, names and values decoded; empty values left out."""
    return parse_qsl(query)


def query_values(query: str, name: str) -> list[str]:
    """The non-empty values of parameter C{name} (exactly so spelled), in order."""
    return [value for key, value in query_pairs(query) if key == name]
