# -*- test-case-name: tests.test_fd_exhaustion -*-
"""
What the forwarding path would otherwise load on first use, loaded at startup.

An import or codec lookup opens files.  Made for the first time under load,
when no file descriptor is free, it fails, and some failures stay: a codec
whose module failed to import is remembered as unknown ("unknown encoding:
idna" from every later C{getaddrinfo}), for the life of the process.  So
everything a request can need is loaded before the gateway listens, and
tests.test_fd_exhaustion checks that a gateway's first requests (HTTP and
HTTPS, JSON and streams, gzip, errors) import nothing more.
"""

from __future__ import annotations

import codecs
import importlib

# Codecs looked up by name, not imported: the IDNA codec (and the punycode
# codec it uses for non-ASCII labels) encode host names for the resolver.
CODECS = ("idna", "punycode")

# Modules imported inside functions on the request path.
MODULES = (
    "majordomo.usage.anthropic",  # majordomo.usage picks the parser per provider
    "majordomo.usage.gemini",
    "majordomo.usage.openai",
)


def load_lazy_imports() -> None:
    """Import and look up now what requests would load on first use."""
    for name in CODECS:
        codecs.lookup(name)
    for module in MODULES:
        importlib.import_module(module)
