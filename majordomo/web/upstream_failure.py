# -*- test-case-name: tests.test_upstream_failure,tests.test_faults -*-
"""
What the gateway tells a client, and its row, when the upstream gave no
answer: a status and message per kind of failure, whether the provider may
have billed the request anyway, and a reason for the log that holds no
caller text.
"""

from __future__ import annotations

from twisted.internet import defer, error
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from majordomo.ledger.record import CLIENT_CLOSED_REQUEST
from majordomo.logtext import printable


def answer(failure: Failure, client_gone: bool) -> tuple[int, str, bool]:
    """
    The status and message for a request whose upstream failed with
    C{failure}, and whether it may have been billed: a connection never
    made was not; one the upstream may have read could have been.
    """
    if client_gone:
        return CLIENT_CLOSED_REQUEST, "Client disconnected before the upstream answered", True
    if failure.check(error.TimeoutError):
        return 504, "Connecting to the upstream provider timed out", False
    if _timed_out(failure):
        return 504, "The upstream provider did not answer in time", True
    if failure.check(ConnectError, ConnectionRefusedError, DNSLookupError):
        return 502, "The upstream provider could not be reached", False
    if failure.check(ResponseFailed):
        return 502, "The upstream provider closed the connection without answering", True
    return 502, f"Upstream request failed ({failure.type.__name__})", True  # type: ignore[union-attr]


def _timed_out(failure: Failure) -> bool:
    """A request treq cancelled at upstream.response_timeout."""
    if failure.check(defer.CancelledError, defer.TimeoutError):
        return True
    if failure.check(ResponseNeverReceived):
        reasons = getattr(failure.value, "reasons", [])
        return any(reason.check(defer.CancelledError) for reason in reasons)
    return False


# Failures whose message comes from the operating system or the configured
# base URL, never from the request: logged as they are.
_FAILURES_WITH_SAFE_MESSAGES = (ConnectError, error.TimeoutError, defer.CancelledError)


def reason(failure: Failure) -> str:
    """
    Why a request to the upstream failed, for the log.  Other exceptions'
    messages may hold the URL (with a C{?key=}) or a header: only their
    type is named, and those of the reasons they wrap.
    """
    if failure.check(*_FAILURES_WITH_SAFE_MESSAGES):
        return printable(failure.getErrorMessage())
    named = failure.type.__name__  # type: ignore[union-attr]
    wrapped = getattr(failure.value, "reasons", None)
    if isinstance(wrapped, list):
        inner = ", ".join(
            reason(each) if isinstance(each, Failure) else type(each).__name__ for each in wrapped
        )
        named += f" ({inner})"
    return named
