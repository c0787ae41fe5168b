"""
Tests that the C{majordomo} command writes to the streams it is given, not to
the process's own: what L{majordomo.cli.run} and L{majordomo.cli.parse} are
handed is where the output goes.
"""

from __future__ import annotations

import io

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from majordomo import __version__, cli


class InjectedStreamsTests(SynchronousTestCase):
    def test_version_on_given_stdout(self) -> None:
        """--version, at the top or after a subcommand, is written to the stream parse got."""
        for argv in (["--version"], ["keys", "list", "--version"]):
            out = io.StringIO()
            with self.assertRaises(SystemExit) as exited:
                cli.parse(argv, out)
            self.assertEqual(exited.exception.code, 0)
            self.assertEqual(out.getvalue(), f"majordomo {__version__}\n", argv)

    def test_usage_error_on_given_stderr(self) -> None:
        """A bad command line is one line on the err stream run got, with exit code 2."""
        out, err = io.StringIO(), io.StringIO()
        code = self.successResultOf(cli.run(task.Clock(), ["keys", "frobnicate"], out, err))
        self.assertEqual(code, 2)
        self.assertEqual(out.getvalue(), "")
        self.assertIn("majordomo: ", err.getvalue())
        self.assertIn("(see majordomo --help)", err.getvalue())
