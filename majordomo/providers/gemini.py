# -*- test-case-name: tests.test_providers -*-
"""
What a Gemini request path says: the model it names (C{/models/ID} or
C{/tunedModels/ID}) and the method it calls on it (C{:generateContent}, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# A model named in a path, and the ":method" after it (the letters of it).
_MODEL_IN_PATH = re.compile(r"/(models|tunedModels)/([^/:?]+)(:([A-Za-z]*))?")


@dataclass(frozen=True)
class PathModel:
    """
    One place a path names a model: C{model} as written (not percent-decoded),
    whether it is a C{tunedModels/} one, and the C{method} called on it
    (C{None} without a C{:}; C{""} for a C{:} without letters).
    """

    model: str
    tuned: bool
    method: str | None


def models_in_path(route: str) -> Iterator[PathModel]:
    """
    Every place C{route} (a path without its query) names a model, left to
    right, each position tried in turn: a caller takes the first that
    answers its question.
    """
    position = 0
    while (match := _MODEL_IN_PATH.search(route, position)) is not None:
        method = match[4] if match[3] is not None else None
        yield PathModel(match[2], match[1] == "tunedModels", method)
        position = match.start() + 1
