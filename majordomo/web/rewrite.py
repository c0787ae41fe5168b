# -*- test-case-name: tests.test_admission,tests.test_streaming -*-
"""
The one change the gateway makes to a request it forwards: a request the
include_usage policy (L{majordomo.providers.openai_usage}) may ask for usage
is asked for it (C{stream_options.include_usage}, spliced into its body), so
its row has exact tokens.  The usage chunk the client did not ask for is then
kept from it (L{majordomo.usage.openai.UsageChunkFilter}).
"""

from __future__ import annotations

from dataclasses import dataclass

from majordomo.providers.openai_usage import inject_include_usage, may_ask_for_usage
from majordomo.web.admission import Admitted, Arrival


@dataclass(frozen=True)
class UsageRewrite:
    """The body to forward, and what the gateway did to it."""

    asked: bool  # the gateway may ask this request for usage
    body: bytes
    strip_usage_chunk: bool  # the client did not ask: its usage chunk is dropped


def usage_rewrite(arrival: Arrival, admitted: Admitted) -> UsageRewrite:
    """The admitted request's body, asking for usage where the gateway may."""
    asked = may_ask_for_usage(arrival.provider, arrival.path, arrival.query)
    if not (asked and admitted.fields):
        return UsageRewrite(asked, admitted.body, False)
    body, strip_usage_chunk = inject_include_usage(admitted.body, admitted.fields)
    return UsageRewrite(asked, body, strip_usage_chunk)
