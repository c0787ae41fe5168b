"""
What an operator mistypes gets one clear line, never a traceback, and is
never stored or started with: CLI arguments that are not UTF-8, metadata
names no request can carry, configuration files that are not UTF-8 or give
a key twice, base URLs the gateway cannot forward to, values no library can
take.  The configuration errors are checked in real C{twistd majordomo} and
C{majordomo serve} processes too, where nothing but that line may be printed.
"""

from __future__ import annotations

import os

from twisted.internet import defer, utils
from twisted.trial.unittest import SynchronousTestCase, TestCase

from majordomo.config import ConfigError, load_config
from majordomo.metadata import MetadataError, extract, metadata_name
from tests import support

BAD_METADATA_NAMES = ["", "-", "n" * 65, "user id", "user:id", "a\tb", "(x)", "caf\xe9", "Key"]
GOOD_METADATA_NAMES = {"user-ID": "User-Id", "n" * 64: "N" + "n" * 63, "a.b_c!~": "A.b_c!~"}


async def run(executable: str, *args: bytes, **env: str) -> tuple[bytes, int]:
    """Run a real process; its stdout and stderr together, and its exit status."""
    out, err, code = await utils.getProcessOutputAndValue(
        executable, args, env=support.test_env(**env)
    )
    return out + err, code


class CommandLineTests(TestCase):
    """The C{majordomo} command refuses what it cannot store, in one line."""

    def setUp(self) -> None:
        support.fresh_database()

    def test_argument_not_utf8(self) -> defer.Deferred[None]:
        """
        `keys create --name $'\\xff'` (and any other argument that is not
        UTF-8) is refused as a usage error, exit status 2, and nothing is stored.
        """

        async def go() -> None:
            cases = {
                (b"keys", b"create", b"--name", b"\xff"): b"b'\\xff'",
                (b"keys", b"get", b"a\xffb"): b"b'a\\xffb'",
            }
            for args, shown in cases.items():
                output, code = await run(support.MAJORDOMO_BIN, *args)
                expected = b"majordomo: argument %s is not valid UTF-8\n(see majordomo --help)\n"
                self.assertEqual((output, code), (expected % shown, 2))
            self.assertEqual(support.run_sql("SELECT count(*) FROM api_keys"), [(0,)])

        return support.as_deferred(go())

    def test_metadata_activate_refuses_names_never_accepted(self) -> defer.Deferred[None]:
        """
        `metadata activate` refuses a name no request can carry (empty, 65
        characters, a space or other character outside an HTTP header name,
        a reserved name) with one line and exit status 2, storing nothing; a
        valid name is stored in its canonical spelling.
        """

        async def go() -> None:
            key_id = await self._key_id()
            for name in BAD_METADATA_NAMES:
                args = (b"metadata", b"activate", b"--key-id", key_id.encode(), name.encode())
                output, code = await run(support.MAJORDOMO_BIN, *args)
                self.assertEqual(code, 2, output)
                lines = output.decode().splitlines()
                self.assertEqual(len(lines), 2, output)
                self.assertTrue(lines[0].startswith("majordomo: "), output)
                self.assertEqual(lines[1], "(see majordomo --help)")
            rows = "SELECT key_name FROM llm_requests_metadata_keys"
            self.assertEqual(support.run_sql(rows), [])
            args = (b"metadata", b"activate", b"--key-id", key_id.encode(), b"user-ID")
            output, code = await run(support.MAJORDOMO_BIN, *args)
            self.assertEqual(code, 0, output)
            self.assertEqual(support.run_sql(rows), [("User-Id",)])

        return support.as_deferred(go())

    async def _key_id(self) -> str:
        output, code = await run(support.MAJORDOMO_BIN, b"keys", b"create", b"--name", b"ops")
        self.assertEqual(code, 0, output)
        return output.decode().split("ID:", 1)[1].split()[0]


class MetadataNameRuleTests(SynchronousTestCase):
    """One rule for names: what the CLI refuses, a request cannot carry, and the reverse."""

    def test_same_rule(self) -> None:
        for name in BAD_METADATA_NAMES:
            with self.assertRaises(MetadataError):
                metadata_name(name)
            if name.lower() != "key":  # X-Majordomo-Key is the key, not metadata
                with self.assertRaises(MetadataError):
                    extract([(b"X-Majordomo-" + name.encode("latin-1"), [b"v"])])
        for name, canonical in GOOD_METADATA_NAMES.items():
            self.assertEqual(metadata_name(name), canonical)
            found = extract([(b"X-Majordomo-" + name.encode(), [b"v"])])
            self.assertEqual(found.raw, {canonical: "v"})


def _write(test: SynchronousTestCase, data: bytes) -> str:
    path = test.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    return path


class ConfigurationTests(SynchronousTestCase):
    """load_config: each mistake is one ConfigError line naming the file or key."""

    def refused(self, data: bytes, env: dict[str, str] | None = None) -> str:
        path = _write(self, data)
        with self.assertRaises(ConfigError) as caught:
            load_config(path, env=env or {})
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        return message.replace(path, "PATH")

    def test_file_not_utf8(self) -> None:
        """A Latin-1 file is named, with the first bad byte and its line."""
        self.assertEqual(
            self.refused(b"server:\n  host: caf\xe9\n"),
            "PATH: not UTF-8 (byte 0xe9 on line 2); save it as UTF-8",
        )

    def test_duplicate_keys(self) -> None:
        """A key given twice (top level or nested) is refused with its full name and line."""
        self.assertEqual(
            self.refused(b"server:\n  port: 1\n  host: a\n  port: 2\n"),
            "PATH: line 4: server.port: duplicate key (given twice)",
        )
        self.assertEqual(
            self.refused(b"server:\n  port: 1\nstorage: {}\nserver:\n  port: 2\n"),
            "PATH: line 4: server: duplicate key (given twice)",
        )

    def test_base_urls_refused(self) -> None:
        """
        A base URL the gateway cannot forward to as written is refused at
        startup, naming the key and saying what is wrong.
        """
        cases = {
            "https://b\xfccher.example": "an ASCII host; write it in its IDNA form "
            "(xn--bcher-kva.example)",
            "https://user:secret@api.openai.com": "user name or password",
            "https://api.openai.com/v1?x=1": "must not have a query",
            "https://api.openai.com/?": "must not have a query",
            "https://api.openai.com#top": "or fragment",
            "https://api.openai.com /v1": "whitespace",
            "https://api.openai.com\t": "whitespace",
            "https://api.openai.com:https": "port number between 1 and 65535",
            "https://api.openai.com:65536": "port number between 1 and 65535",
            "https://api.openai.com:0": "port number between 1 and 65535",
            "https://[zz]:80": "port number between 1 and 65535",
            "https://api.openai.com/p\xe9": "must be ASCII",
            "https://api.openai.com/a\\b": "path of URL characters only",
            "ftp://api.openai.com": "must be an http:// or https:// URL",
        }
        for url, problem in cases.items():
            env = {"MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": url}
            message = self.refused(b"", env)
            self.assertTrue(message.startswith("providers.openai.base_url: "), message)
            self.assertIn(problem, message)

    def test_base_urls_accepted(self) -> None:
        """Host names, IP addresses, ports and a path prefix are all fine."""
        for url in (
            "https://api.openai.com",
            "https://api.openai.com/",
            "http://127.0.0.1:4000",
            "http://[::1]:4000",
            "https://gateway.internal/openai/v1",
            "http://llm_proxy:8080",
        ):
            env = {"MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": url}
            config = load_config(_write(self, b""), env=env)
            self.assertEqual(config.providers.base_url("openai"), url.rstrip("/"))

    def test_mistyped_environment(self) -> None:
        """Environment overrides that cannot be used are one line naming the key."""
        cases = {
            "MAJORDOMO_SERVER_PORT": ("abc", "server.port: expected a whole number, got 'abc'"),
            "MAJORDOMO_SERVER_REUSE_PORT": (
                "maybe",
                "server.reuse_port: expected true or false, got 'maybe'",
            ),
            "MAJORDOMO_SERVER_HEAD_TIMEOUT": (
                "soon",
                "server.head_timeout: expected a number of seconds (or 250ms, 30s, 5m, 1h), "
                "got 'soon'",
            ),
            # Not UTF-8: Python hands it over as a lone surrogate.  Never shown: it may be secret.
            "MAJORDOMO_STORAGE_POSTGRES_PASSWORD": (
                os.fsdecode(b"\xff"),
                "storage.postgres.password: not valid UTF-8 text",
            ),
        }
        for name, (value, expected) in cases.items():
            self.assertEqual(self.refused(b"", {name: value}), expected)

    def test_text_no_library_takes(self) -> None:
        """A YAML string holding NUL or a lone surrogate is refused, not passed on."""
        self.assertEqual(
            self.refused(b'storage:\n  postgres:\n    user: "a\\0b"\n'),
            "storage.postgres.user: must not hold a NUL character",
        )
        self.assertEqual(
            self.refused(b'storage:\n  postgres:\n    password: "\\ud800"\n'),
            "storage.postgres.password: not valid UTF-8 text",
        )

    def test_yaml_pyyaml_cannot_construct(self) -> None:
        """Values PyYAML fails on with other exceptions than YAMLError are one line too."""
        cases = {
            b"server:\n  reuse_port: !!bool x\n": "KeyError",
            b"server:\n  port: !!int x\n": "ValueError",
            b"server:\n  port: !!int ''\n": "IndexError",
            b"server:\n  port: " + b"9" * 5000 + b"\n": "ValueError",
            b"server:\n  host: !!timestamp x\n": "AttributeError",
            b"[" * 5000: "RecursionError",
        }
        for data, error in cases.items():
            self.assertEqual(self.refused(data), f"PATH: is not valid YAML ({error})")
        self.assertEqual(self.refused(b"a: \0\n"), "PATH: is not valid YAML")

    def test_aliases_cost_nothing(self) -> None:
        """
        An alias that holds itself, or aliases nested to a value of 9**6
        elements, are read at once and quoted briefly.
        """
        self.assertEqual(
            self.refused(b"server:\n  host: &a {b: *a}\n"),
            "server.host: expected a string, got {'b': {'b': {...}}}",
        )
        # Each level holds the one before nine times: 9**7 strings when expanded.
        levels = [b"&a0 [x, x, x, x, x, x, x, x, x]"]
        levels += [b"&a%d [%s]" % (i, b", ".join([b"*a%d" % (i - 1)] * 9)) for i in range(1, 7)]
        message = self.refused(b"server:\n  host: [" + b", ".join(levels) + b"]\n")
        self.assertTrue(message.startswith("server.host: expected a string, got [["), message)
        self.assertLess(len(message), 200, message)

    def test_keys_shown_on_one_line(self) -> None:
        """An unknown key holding a newline, or very long, is quoted, not printed as is."""
        self.assertEqual(self.refused(b'"x\\ny": 1\n'), "'x\\ny': unknown key")
        message = self.refused(b"k" * 10000 + b": 1\n")
        self.assertLess(len(message), 120, message)


class ProcessConfigurationTests(TestCase):
    """A real `twistd majordomo` or `majordomo serve` prints the one line, nothing else."""

    timeout = 60

    def test_one_line_and_status_1(self) -> defer.Deferred[None]:
        files = {
            b"server:\n  port: [1\n": "line 3 is not valid YAML",
            b"server:\n  host: caf\xe9\n": "not UTF-8 (byte 0xe9 on line 2); save it as UTF-8",
            b"server:\n  port: 1\n  port: 2\n": "line 3: server.port: duplicate key (given twice)",
            b"providers:\n  openai:\n    base_url: https://api.openai.com?x\n": (
                "providers.openai.base_url: must not have a query"
            ),
        }
        runs = []
        for data, problem in files.items():
            path = _write(self, data)
            twistd = (support.TWISTD_BIN, b"--nodaemon", b"--pidfile=", b"majordomo")
            for command in (twistd, (support.MAJORDOMO_BIN, b"serve")):
                args = (*command[1:], b"--config", path.encode())
                runs.append((path, problem, defer.ensureDeferred(run(command[0], *args))))

        async def go() -> None:
            for path, problem, running in runs:
                output, code = await running
                text = output.decode()
                self.assertEqual(code, 1, text)
                where = "" if problem.startswith("providers.") else f"{path}: "
                self.assertTrue(
                    text.startswith(f"majordomo: configuration error: {where}{problem}"), text
                )
                self.assertEqual(len(text.splitlines()), 1, text)
                self.assertTrue(text.endswith("\n"), text)

        return support.as_deferred(go())
