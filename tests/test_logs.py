"""The text of log lines, as `majordomo serve` writes them."""

from __future__ import annotations

import io
import json
import sys

from twisted.logger import Logger, LogPublisher, eventAsText
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from majordomo import logs


class MessageTests(SynchronousTestCase):
    """The gateway's shortcut for one-field formats says what twisted.logger would."""

    def test_same_text_as_twisted(self) -> None:
        events = [
            {"log_format": "{request_line}", "request_line": "POST /v1/x 200 in={19}"},
            {"log_format": "{count}", "count": 5},
            {"log_format": "{a} and {b}", "a": "x", "b": "y"},
            {"log_format": "{a!r}", "a": "x"},
            {"log_format": "{missing}"},
            {"log_format": None},
        ]
        for event in events:
            self.assertEqual(
                logs._message(event),
                eventAsText(event, includeTimestamp=False, includeSystem=False),
                event,
            )

    def test_failure_keeps_its_traceback(self) -> None:
        failure = Failure(ZeroDivisionError("division by zero"))
        event = {"log_format": "{what}", "what": "Proxying failed", "log_failure": failure}
        self.assertIn("ZeroDivisionError", logs._message(event))

    def test_request_line_in_both_formats(self) -> None:
        """A request line reads the same on the console and in JSON, with its fields."""
        for make, parse in (
            (logs.console_observer, lambda text: text.rstrip("\n")),
            (logs.json_observer, lambda text: json.loads(text)["message"]),
        ):
            out = io.StringIO()
            self.patch(sys, "stdout", out)
            log = Logger(namespace="majordomo.web.proxy", observer=LogPublisher(make()))
            log.info(
                "{request_line}", request_line="POST /v1/chat/completions 200", status_code=200
            )
            self.assertEqual(parse(out.getvalue()), "POST /v1/chat/completions 200")
