"""
The repository stands alone: a clone holds every document its code and tests
cite and every file its tests read, and nothing in it points at a directory
beside the clone (the C{shared} inputs the project started from), which a
person who clones the repository does not have.
"""

from __future__ import annotations

import os
import re
import subprocess

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")

# Spelled in pieces so that this file does not name what it looks for.
_OUTSIDE = "shared"
FORBIDDEN = (
    f"../{_OUTSIDE}",
    f"{_OUTSIDE}/vectors",
    f"{_OUTSIDE}/seed",
    f"{_OUTSIDE}/DESIGN",
    f"{_OUTSIDE}/USAGE-SPEC",
)

# "USAGE-SPEC.md section 5", "USAGE-SPEC.md §7.3", "USAGE-SPEC 2.1, 5",
# "USAGE-SPEC.md sections 5 and 7.2", a citation broken over two comment lines.
_CITATION = re.compile(
    r"USAGE-SPEC(?:\.md)?[\s#(]*(?:sections?\s+|§\s*)?"
    r"(\d+(?:\.\d+)?(?:(?:,\s*|\s+and\s+)\d+(?:\.\d+)?)*)"
)
_SECTION_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_SPEC_HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", re.MULTILINE)


def tracked_files() -> list[str]:
    """Every file git tracks in this checkout, relative to its root."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return [name.decode("utf-8") for name in listed.split(b"\0") if name]


def read_text(relative: str) -> str:
    """A tracked file's text (undecodable bytes replaced), "" if it is gone."""
    path = os.path.join(ROOT, relative)
    if not os.path.isfile(path):
        return ""  # deleted in the working tree, not yet in the index
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


class StandaloneTests(SynchronousTestCase):
    """Nothing in the repository depends on a directory beside it."""

    def test_nothing_points_outside(self) -> None:
        """No tracked file reads or cites the shared inputs beside the clone."""
        files = tracked_files()
        self.assertGreater(len(files), 100, "git ls-files found too few files")
        offending = {
            name: [word for word in FORBIDDEN if word in text]
            for name in files
            if (text := read_text(name))
        }
        offending = {name: words for name, words in offending.items() if words}
        self.assertEqual(offending, {}, "files that point outside the repository")

    def test_cited_documents_exist(self) -> None:
        """
        The documents the code, the tests and the README cite are in docs/:
        the usage spec, the architecture with its "Known traps" (which code
        comments cite), and the getting-started guide the tests read SQL from.
        """
        for name in ("USAGE-SPEC.md", "ARCHITECTURE.md", "getting-started.md"):
            self.assertTrue(os.path.isfile(os.path.join(DOCS, name)), f"docs/{name} is missing")
        architecture = read_text("docs/ARCHITECTURE.md")
        self.assertRegex(architecture, r"(?m)^#+ Known traps$")

    def test_cited_sections_exist(self) -> None:
        """
        Every section of docs/USAGE-SPEC.md that a tracked file cites by
        number ("USAGE-SPEC.md section 5", "§7.3", "USAGE-SPEC 2.1") is a
        heading of that number there.
        """
        headings = set(_SPEC_HEADING.findall(read_text("docs/USAGE-SPEC.md")))
        self.assertGreaterEqual(len(headings), 12)
        cited: dict[str, set[str]] = {}
        for name in tracked_files():
            for citation in _CITATION.finditer(read_text(name)):
                for number in _SECTION_NUMBER.findall(citation[1]):
                    cited.setdefault(number, set()).add(name)
        self.assertIn("8", cited, "no citation found: the pattern no longer matches the code")
        missing = {
            number: sorted(names) for number, names in cited.items() if number not in headings
        }
        self.assertEqual(missing, {}, "sections cited but not in docs/USAGE-SPEC.md")
