"""
The getting-started guide's SQL (docs/getting-started.md), read from the
guide itself, so the tests run its queries exactly as a user copies them.
A missing guide or query fails the tests that need it; it never skips them.
"""

from __future__ import annotations

import os
import re

GUIDE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "getting-started.md")

_SQL_BLOCK = re.compile(r"^```sql\n(SELECT\n.*?;)\n```$", re.DOTALL | re.MULTILINE)


def _queries() -> dict[str, str]:
    """
    Each multi-line query (a C{```sql} block whose first line is "SELECT"),
    by the title of the Markdown heading above it.
    """
    with open(GUIDE, encoding="utf-8") as f:
        text = f.read()
    queries = {}
    for block in _SQL_BLOCK.finditer(text):
        headings = re.findall(r"^#+ (.+)$", text[: block.start()], re.MULTILINE)
        queries[headings[-1]] = block[1]
    return queries


_BY_TITLE = _queries()
GUIDE_BY_MODEL = _BY_TITLE["Total spend by model"]
GUIDE_DAILY = _BY_TITLE["Daily spend"]
GUIDE_BY_KEY = _BY_TITLE["Spend by API key"]
GUIDE_BY_USER = _BY_TITLE["Usage by metadata"]
