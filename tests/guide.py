"""
The getting-started guide's SQL (../shared/seed/getting-started.txt), read
from the guide itself, so the tests run its queries exactly as a user copies
them.  A missing guide fails the tests that need it; it never skips them.
"""

from __future__ import annotations

import os

GUIDE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "seed", "getting-started.txt"
)


def _queries() -> dict[str, str]:
    """Each multi-line query (a line "SELECT" to the line ending in ";"), by the line before it."""
    with open(GUIDE, encoding="utf-8") as f:
        lines = f.read().splitlines()
    queries = {}
    for start, line in enumerate(lines):
        if line == "SELECT":
            end = next(i for i in range(start, len(lines)) if lines[i].endswith(";"))
            title = next(lines[i] for i in range(start - 1, -1, -1) if lines[i].strip())
            queries[title] = "\n".join(lines[start : end + 1])
    return queries


_BY_TITLE = _queries()
GUIDE_BY_MODEL = _BY_TITLE["Total spend by model"]
GUIDE_DAILY = _BY_TITLE["Daily spend"]
GUIDE_BY_KEY = _BY_TITLE["Spend by API key"]
GUIDE_BY_USER = _BY_TITLE["Query usage by metadata:"]
