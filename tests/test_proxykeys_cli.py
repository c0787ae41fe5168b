"""
C{majordomo proxy-keys ...} and C{majordomo secrets rotate}: the real command
in its own process against the test database, secrets fed on its stdin, and
what it prints checked against the tables (and the sealed rows opened here).
No provider key or encryption key given on stdin may appear in the output.
"""

from __future__ import annotations

import hashlib
import re

import psycopg2
from twisted.internet import defer, protocol, reactor
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from majordomo.db import Database
from majordomo.db.keys import KEYS_CHANNEL
from majordomo.proxykeys.store import ProxyKeyStore
from majordomo.vault import SecretBox, VaultError, provider_key_aad
from tests import support
from tests.test_cli import majordomo
from tests.test_policy_cli import create_key

KEY_1 = "11" * 32
KEY_2 = "2a" * 32
KEY_3 = "3b" * 32
BOX_1, BOX_2, BOX_3 = (SecretBox.from_hex(k) for k in (KEY_1, KEY_2, KEY_3))
OPENAI_MARKER = "sk-proj-MARKERopenai0123456789abcdef"
ANTHROPIC_MARKER = "sk-ant-api03-MARKERanthropic0123456789"

PROXY_KEY_CREATED = re.compile(
    r"\AProxy key created successfully!\n"
    r"\n"
    r"  ID:            (?P<id>[0-9a-f-]{36})\n"
    r"  Name:          (?P<name>.*)\n"
    r"  Majordomo key: (?P<api_key_id>[0-9a-f-]{36})\n"
    r"  Key:           (?P<key>mdm_pk_[A-Za-z0-9_-]{40,})\n"
    r"\n"
    r"\u26a0\ufe0f  Save this key now - it cannot be retrieved later.\n\Z"
)
UNKNOWN = "00000000-0000-0000-0000-000000000000"


class _Captured(protocol.ProcessProtocol):
    """Writes C{stdin} to the process, closes it, and collects both outputs."""

    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: defer.Deferred[int] = defer.Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        self.done.callback(getattr(reason.value, "exitCode", -1))


async def majordomo_fed(stdin: str, *args: str, **env: str) -> tuple[str, str, int]:
    """Run ./bin/majordomo with C{args} and C{stdin} piped in; (stdout, stderr, exit code)."""
    captured = _Captured(stdin.encode())
    reactor.spawnProcess(
        captured,
        support.MAJORDOMO_BIN,
        [support.MAJORDOMO_BIN, *args],
        env=support.test_env(**env),
    )
    code = await captured.done
    return b"".join(captured.out).decode(), b"".join(captured.err).decode(), code


def with_key(key: str = KEY_1, previous: str = "") -> dict[str, str]:
    return {
        "MAJORDOMO_SECRETS_ENCRYPTION_KEY": key,
        "MAJORDOMO_SECRETS_PREVIOUS_ENCRYPTION_KEYS": previous,
    }


async def create_proxy_key(api_key_id: str, name: str = "Acme") -> dict[str, str]:
    """A proxy key made by `majordomo proxy-keys create`; its printed fields."""
    out, err, code = await majordomo(
        "proxy-keys", "create", "--name", name, "--majordomo-key-id", api_key_id
    )
    match = PROXY_KEY_CREATED.match(out)
    assert (err, code) == ("", 0) and match is not None, (out, err, code)
    return match.groupdict()


def sealed_rows() -> list[tuple[str, str, bytes, str]]:
    """(proxy key id, provider, sealed secret, fingerprint) of every stored provider key."""
    rows = support.run_sql(
        "SELECT proxy_key_id::text, provider, secret, key_fingerprint FROM proxy_key_providers "
        "ORDER BY proxy_key_id, provider"
    )
    return [(pk, provider, bytes(secret), fp) for pk, provider, secret, fp in rows]


def opened(box: SecretBox) -> dict[tuple[str, str], str]:
    """Every stored provider key, opened with C{box} (VaultError if one does not open)."""
    return {
        (pk, provider): box.open(secret, provider_key_aad(pk, provider))
        for pk, provider, secret, _ in sealed_rows()
    }


class ProxyKeysCommandTests(TestCase):
    """Every `proxy-keys` command, and its refusals, one clear line each."""

    def setUp(self) -> None:
        support.fresh_database()

    def assertNoSecret(self, *texts: str) -> None:
        for text in texts:
            for secret in (OPENAI_MARKER, ANTHROPIC_MARKER, KEY_1, KEY_2, KEY_3):
                self.assertNotIn(secret, text)
            self.assertNotIn("MARKER", text)

    def test_create_prints_key_once_and_stores_only_hash(self) -> defer.Deferred[None]:
        """`create` prints the block once; the table holds its SHA-256, never the key."""

        async def go() -> None:
            api_key_id = await create_key("Platform")
            created = await create_proxy_key(api_key_id, "Acme Corp")
            self.assertEqual((created["name"], created["api_key_id"]), ("Acme Corp", api_key_id))
            rows = support.run_sql(
                "SELECT id::text, majordomo_api_key_id::text, name, key_hash, is_active "
                "FROM proxy_keys"
            )
            digest = hashlib.sha256(created["key"].encode()).hexdigest()
            self.assertEqual(rows, [(created["id"], api_key_id, "Acme Corp", digest, True)])
            dump = repr(support.run_sql("SELECT * FROM proxy_keys"))
            self.assertNotIn(created["key"][len("mdm_pk_") :], dump)

            out, err, code = await majordomo("proxy-keys", "get", created["id"])
            self.assertEqual((err, code), ("", 0))
            self.assertIn(f"  ID:            {created['id']}\n", out)
            self.assertIn(f"  Majordomo key: {api_key_id}\n", out)
            self.assertIn("  Status:        active\n", out)
            self.assertIn("  Providers:     none\n", out)
            self.assertNotIn(created["key"], out)
            out, err, code = await majordomo("proxy-keys", "list-providers", created["id"])
            self.assertEqual((err, code), ("", 0))
            self.assertTrue(
                out.startswith(f"Proxy key {created['id']} (Acme Corp) has no provider keys.")
            )

        return support.as_deferred(go())

    def test_create_refusals(self) -> defer.Deferred[None]:
        """Missing options are usage errors; an unknown Majordomo key is one line; no row."""

        async def go() -> None:
            api_key_id = await create_key("Platform")
            _, err, code = await majordomo("proxy-keys", "create", "--majordomo-key-id", api_key_id)
            self.assertEqual(code, 2)
            self.assertIn("--name is required", err)
            _, err, code = await majordomo("proxy-keys", "create", "--name", "Acme")
            self.assertEqual(code, 2)
            self.assertIn("--majordomo-key-id is required", err)
            for key_id in (UNKNOWN, "nonsense"):
                out, err, code = await majordomo(
                    "proxy-keys", "create", "--name", "Acme", "--majordomo-key-id", key_id
                )
                self.assertEqual(
                    (out, err, code), ("", f"majordomo: no API key with id {key_id}\n", 1)
                )
            self.assertEqual(support.run_sql("SELECT count(*) FROM proxy_keys"), [(0,)])

        return support.as_deferred(go())

    def test_list_filters_by_majordomo_key(self) -> defer.Deferred[None]:
        """`list` shows every proxy key, or those of one Majordomo key; never a plaintext."""

        async def go() -> None:
            out, err, code = await majordomo("proxy-keys", "list")
            self.assertEqual((err, code), ("", 0))
            self.assertIn("No proxy keys yet.", out)
            first, second = await create_key("First"), await create_key("Second")
            acme = await create_proxy_key(first, "Acme")
            globex = await create_proxy_key(second, "Globex")
            out, err, code = await majordomo("proxy-keys", "list")
            self.assertEqual((err, code), ("", 0))
            self.assertTrue(out.startswith("ID "), out)
            for created in (acme, globex):
                self.assertIn(created["id"], out)
                self.assertNotIn(created["key"], out)
            out, _, code = await majordomo("proxy-keys", "list", "--majordomo-key-id", first)
            self.assertEqual(code, 0)
            self.assertIn(acme["id"], out)
            self.assertIn("Acme", out)
            self.assertNotIn(globex["id"], out)
            out, err, code = await majordomo("proxy-keys", "list", "--majordomo-key-id", UNKNOWN)
            self.assertEqual(
                (out, err, code), ("", f"majordomo: no API key with id {UNKNOWN}\n", 1)
            )

        return support.as_deferred(go())

    def test_set_list_and_remove_provider(self) -> defer.Deferred[None]:
        """
        `set-provider` reads the provider key from stdin and stores it sealed
        under the configured key, bound to its row; `list-providers` shows the
        provider and the encryption key's fingerprint; a second set replaces
        it; `remove-provider` removes it.  Each change NOTIFYs the key channel.
        The provider key is never printed, nor stored in the clear.
        """

        async def go() -> None:
            pk = (await create_proxy_key(await create_key("Platform")))["id"]
            listener = psycopg2.connect(**support.pg_config().dsn_parameters())
            listener.autocommit = True
            self.addCleanup(listener.close)
            listener.cursor().execute(f"LISTEN {KEYS_CHANNEL}")
            outputs: list[str] = []

            def notified() -> list[tuple[str, str]]:
                listener.poll()
                seen = [(n.channel, n.payload) for n in listener.notifies]
                listener.notifies.clear()
                return seen

            for provider, secret in (("openai", OPENAI_MARKER), ("anthropic", ANTHROPIC_MARKER)):
                out, err, code = await majordomo_fed(
                    secret + "\n", "proxy-keys", "set-provider", pk, "--provider", provider,
                    **with_key(),
                )  # fmt: skip
                outputs += [out, err]
                self.assertEqual((err, code), ("", 0))
                self.assertIn(f"Stored the {provider} key of proxy key {pk} (Acme)", out)
                self.assertEqual(notified(), [(KEYS_CHANNEL, pk)])
            self.assertEqual(
                opened(BOX_1), {(pk, "anthropic"): ANTHROPIC_MARKER, (pk, "openai"): OPENAI_MARKER}
            )
            self.assertEqual({row[3] for row in sealed_rows()}, {BOX_1.fingerprint})
            dump = repr(support.run_sql("SELECT * FROM proxy_key_providers"))
            dump += repr(support.run_sql("SELECT * FROM proxy_keys"))
            self.assertNoSecret(dump)

            # Listing needs no encryption key, and shows no secret.
            out, err, code = await majordomo("proxy-keys", "list-providers", pk)
            outputs += [out, err]
            self.assertEqual((err, code), ("", 0))
            lines = out.splitlines()
            self.assertEqual(lines[0].split(), ["PROVIDER", "ENCRYPTED", "WITH", "SET", "UPDATED"])
            self.assertEqual([line.split()[:2] for line in lines[1:3]], [
                ["anthropic", BOX_1.fingerprint], ["openai", BOX_1.fingerprint],
            ])  # fmt: skip
            out, _, _ = await majordomo("proxy-keys", "get", pk)
            outputs.append(out)
            self.assertIn("  Providers:     anthropic, openai\n", out)

            # Setting it again replaces it (a rotated provider key).
            before = sealed_rows()
            out, err, code = await majordomo_fed(
                "sk-proj-MARKERnew\n", "proxy-keys", "set-provider", pk, "--provider", "openai",
                **with_key(),
            )  # fmt: skip
            outputs += [out, err]
            self.assertEqual((err, code), ("", 0))
            self.assertEqual(opened(BOX_1)[(pk, "openai")], "sk-proj-MARKERnew")
            self.assertEqual(len(sealed_rows()), 2)
            self.assertNotIn(before[1][2], [row[2] for row in sealed_rows()])
            notified()

            out, err, code = await majordomo(
                "proxy-keys", "remove-provider", pk, "--provider", "openai"
            )
            self.assertEqual((err, code), ("", 0))
            self.assertIn(f"Removed the openai key of proxy key {pk} (Acme)", out)
            self.assertEqual(notified(), [(KEYS_CHANNEL, pk)])
            self.assertEqual([row[1] for row in sealed_rows()], ["anthropic"])
            out, err, code = await majordomo(
                "proxy-keys", "remove-provider", pk, "--provider", "openai"
            )
            self.assertEqual(
                (out, err, code), ("", f"majordomo: proxy key {pk} (Acme) has no openai key\n", 1)
            )
            self.assertEqual(notified(), [])
            self.assertNoSecret(*outputs)

        return support.as_deferred(go())

    def test_revoke(self) -> defer.Deferred[None]:
        """`revoke` marks the proxy key revoked at once and NOTIFYs its id."""

        async def go() -> None:
            pk = (await create_proxy_key(await create_key("Platform")))["id"]
            listener = psycopg2.connect(**support.pg_config().dsn_parameters())
            listener.autocommit = True
            self.addCleanup(listener.close)
            listener.cursor().execute(f"LISTEN {KEYS_CHANNEL}")
            out, err, code = await majordomo("proxy-keys", "revoke", pk)
            self.assertEqual((err, code), ("", 0))
            self.assertIn(f"Proxy key {pk} (Acme) revoked. Requests using it now get 401.", out)
            listener.poll()
            self.assertEqual(
                [(n.channel, n.payload) for n in listener.notifies], [(KEYS_CHANNEL, pk)]
            )
            self.assertEqual(
                support.run_sql("SELECT is_active, revoked_at IS NOT NULL FROM proxy_keys"),
                [(False, True)],
            )
            out, _, _ = await majordomo("proxy-keys", "get", pk)
            self.assertIn("  Status:        revoked\n", out)
            self.assertIn("  Revoked:       ", out)
            out, _, _ = await majordomo("proxy-keys", "list")
            self.assertIn("revoked", out)

        return support.as_deferred(go())

    def test_unknown_proxy_key(self) -> defer.Deferred[None]:
        """An id that is no proxy key (or no UUID) is one line, exit 1, for every command."""

        async def go() -> None:
            for pk in (UNKNOWN, "nonsense"):
                for command in (
                    ["get", pk],
                    ["list-providers", pk],
                    ["revoke", pk],
                    ["remove-provider", pk, "--provider", "openai"],
                    ["set-provider", pk, "--provider", "openai"],
                ):
                    out, err, code = await majordomo_fed(
                        OPENAI_MARKER, "proxy-keys", *command, **with_key()
                    )
                    self.assertEqual(
                        (out, err, code),
                        ("", f"majordomo: no proxy key with id {pk}\n", 1),
                        command,
                    )
            self.assertEqual(sealed_rows(), [])

        return support.as_deferred(go())

    def test_set_provider_refusals(self) -> defer.Deferred[None]:
        """
        Without an encryption key, with an empty or malformed provider key, an
        unknown provider, or a Majordomo key given as the provider key:
        one line, nothing stored, and the value given never echoed.
        """

        async def go() -> None:
            pk = (await create_proxy_key(await create_key("Platform")))["id"]
            set_openai = ("proxy-keys", "set-provider", pk, "--provider", "openai")
            out, err, code = await majordomo_fed(OPENAI_MARKER, *set_openai)
            self.assertEqual((out, code), ("", 1))
            self.assertIn("secrets.encryption_key is not set", err)
            self.assertEqual(err.count("\n"), 1)

            for given, message in [
                ("", "no provider key given (pipe it on stdin or type it at the prompt)"),
                ("\n  \n", "no provider key given (pipe it on stdin or type it at the prompt)"),
                ("sk-MARKER with space", "the provider key must be one line of printable ASCII "
                 "with no spaces"),
                ("sk-MARKER\nsecond-line", "the provider key must be one line of printable ASCII "
                 "with no spaces"),
                ("sk-MARKER-caf\u00e9", "the provider key must be one line of printable ASCII "
                 "with no spaces"),
                ("mdm_pk_MARKER", "that is a Majordomo key, not a provider key"),
                ("x" * 5000 + "MARKER", "more than 4096 characters on stdin"),
            ]:  # fmt: skip
                out, err, code = await majordomo_fed(given, *set_openai, **with_key())
                self.assertEqual((out, err, code), ("", f"majordomo: {message}\n", 1), given[:40])

            out, err, code = await majordomo_fed(
                OPENAI_MARKER, "proxy-keys", "set-provider", pk, "--provider", "mistral",
                **with_key(),
            )  # fmt: skip
            self.assertEqual((out, code), ("", 2))
            self.assertIn("--provider must be one of openai, anthropic, gemini, azure", err)
            _, err, code = await majordomo("proxy-keys", "set-provider", pk)
            self.assertEqual(code, 2)
            self.assertIn("--provider is required", err)

            # A malformed encryption key is a configuration error that does not quote it.
            out, err, code = await majordomo_fed(
                OPENAI_MARKER, *set_openai, **with_key("MARKER" + "0" * 58)
            )
            self.assertEqual((out, code), ("", 1))
            self.assertIn("secrets.encryption_key", err)
            self.assertNoSecret(err)
            self.assertEqual(sealed_rows(), [])

        return support.as_deferred(go())


class RotateTests(TestCase):
    """`secrets rotate`: every stored provider key re-sealed under the new key, at once."""

    def setUp(self) -> defer.Deferred[None]:
        support.fresh_database()
        self.db = Database(support.pg_config(), reactor=reactor, pool_size=1)
        self.addCleanup(self.db.close)
        return self.db.start()

    async def check_keys(self, box: SecretBox, previous: list[SecretBox] | None = None) -> None:
        await ProxyKeyStore(self.db, box, previous or []).check_keys()

    async def set_provider(self, pk: str, provider: str, secret: str, **env: str) -> None:
        out, err, code = await majordomo_fed(
            secret, "proxy-keys", "set-provider", pk, "--provider", provider, **env
        )
        assert (err, code) == ("", 0), (out, err, code)

    def test_rotate_end_to_end(self) -> defer.Deferred[None]:
        """
        Rows sealed under the current key and a previous one are all re-sealed
        under the new key read from stdin: the old ciphertexts are gone, the
        old key alone fails check_keys, the new one opens every row.  The new
        key is never printed.
        """

        async def go() -> None:
            api_key_id = await create_key("Platform")
            acme = (await create_proxy_key(api_key_id, "Acme"))["id"]
            globex = (await create_proxy_key(api_key_id, "Globex"))["id"]
            await self.set_provider(acme, "openai", OPENAI_MARKER, **with_key(KEY_1))
            await self.set_provider(acme, "anthropic", ANTHROPIC_MARKER, **with_key(KEY_1))
            # One row left over from an earlier key, still listed as a previous one.
            await self.set_provider(globex, "gemini", "AIzaMARKERgemini", **with_key(KEY_3))
            expected = {
                (acme, "openai"): OPENAI_MARKER,
                (acme, "anthropic"): ANTHROPIC_MARKER,
                (globex, "gemini"): "AIzaMARKERgemini",
            }
            before = sealed_rows()
            await self.check_keys(BOX_1, [BOX_3])

            out, err, code = await majordomo_fed(
                KEY_2 + "\n", "secrets", "rotate", **with_key(KEY_1, previous=KEY_3)
            )
            self.assertEqual((err, code), ("", 0))
            self.assertIn(
                f"Re-encrypted 3 stored provider keys under encryption key {BOX_2.fingerprint}.",
                out,
            )
            self.assertIn("set the new key as secrets.encryption_key", out)
            self.assertNotIn(KEY_2, out)
            self.assertNotIn(KEY_2.upper(), out)

            after = sealed_rows()
            self.assertEqual({row[3] for row in after}, {BOX_2.fingerprint})
            self.assertFalse({row[2] for row in before} & {row[2] for row in after})
            self.assertEqual(opened(BOX_2), expected)
            with self.assertRaises(VaultError):
                opened(BOX_1)
            with self.assertRaises(VaultError) as raised:
                await self.check_keys(BOX_1)
            self.assertIn("sealed with another encryption key", str(raised.exception))
            await self.check_keys(BOX_2)

            # The commands keep working under the new key.
            await self.set_provider(globex, "azure", "azureMARKER", **with_key(KEY_2))
            self.assertEqual(opened(BOX_2)[(globex, "azure")], "azureMARKER")

        return support.as_deferred(go())

    def test_rotate_refusals(self) -> defer.Deferred[None]:
        """No encryption key, a malformed or reused new key, or none: one line, nothing changed."""

        async def go() -> None:
            pk = (await create_proxy_key(await create_key("Platform")))["id"]
            await self.set_provider(pk, "openai", OPENAI_MARKER, **with_key(KEY_1))
            before = sealed_rows()
            out, err, code = await majordomo_fed(KEY_2, "secrets", "rotate")
            self.assertEqual((out, code), ("", 1))
            self.assertIn("secrets.encryption_key is not set", err)
            for given, message in [
                ("", "no new encryption key given (pipe it on stdin or type it at the prompt)"),
                (KEY_2[:-2] + "zz", "the new encryption key must be 64 hexadecimal characters "
                 "(32 bytes)"),
                (KEY_2 + "00", "the new encryption key must be 64 hexadecimal characters "
                 "(32 bytes)"),
                (KEY_1.upper(), "the new encryption key is one configured already; make a new "
                 "one (e.g. `openssl rand -hex 32`)"),
                (KEY_3, "the new encryption key is one configured already; make a new "
                 "one (e.g. `openssl rand -hex 32`)"),
            ]:  # fmt: skip
                out, err, code = await majordomo_fed(
                    given, "secrets", "rotate", **with_key(KEY_1, previous=KEY_3)
                )
                self.assertEqual((out, err, code), ("", f"majordomo: {message}\n", 1), given)
            _, err, code = await majordomo("secrets")
            self.assertEqual(code, 2)
            self.assertIn("secrets needs a subcommand", err)
            self.assertEqual(sealed_rows(), before)

        return support.as_deferred(go())

    def test_rotate_with_wrong_key_changes_nothing(self) -> defer.Deferred[None]:
        """Rows no configured key opens: rotate fails in one line and leaves every row as it was."""

        async def go() -> None:
            pk = (await create_proxy_key(await create_key("Platform")))["id"]
            await self.set_provider(pk, "openai", OPENAI_MARKER, **with_key(KEY_1))
            before = sealed_rows()
            out, err, code = await majordomo_fed(KEY_2, "secrets", "rotate", **with_key(KEY_3))
            self.assertEqual((out, code), ("", 1))
            self.assertTrue(err.startswith("majordomo: "), err)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertNotIn(KEY_2, err)
            self.assertEqual(sealed_rows(), before)
            self.assertEqual(opened(BOX_1), {(pk, "openai"): OPENAI_MARKER})

        return support.as_deferred(go())


class _Terminal(protocol.ProcessProtocol):
    """A process on a pseudo-terminal: types C{keys} once C{prompt} shows, collects the screen."""

    def __init__(self, prompt: bytes, keys: bytes) -> None:
        self.prompt, self.keys = prompt, keys
        self.screen = b""
        self.typed = False
        self.done: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.screen += data
        if not self.typed and self.prompt in self.screen:
            self.typed = True
            assert self.transport is not None
            self.transport.write(self.keys)

    def processEnded(self, reason: Failure) -> None:
        self.done.callback(getattr(reason.value, "exitCode", -1))


class PromptTests(TestCase):
    """On a terminal the provider key is asked for at a prompt that does not echo it."""

    def setUp(self) -> None:
        support.fresh_database()

    def test_set_provider_prompts_without_echo(self) -> defer.Deferred[None]:
        """The key typed at the prompt is stored, and the terminal never shows it."""

        async def go() -> None:
            pk = (await create_proxy_key(await create_key("Platform")))["id"]
            terminal = _Terminal(b"openai API key for proxy key", OPENAI_MARKER.encode() + b"\n")
            reactor.spawnProcess(
                terminal,
                support.MAJORDOMO_BIN,
                [support.MAJORDOMO_BIN, "proxy-keys", "set-provider", pk, "--provider", "openai"],
                env=support.test_env(**with_key()),
                usePTY=True,
            )
            code = await terminal.done
            screen = terminal.screen.decode()
            self.assertEqual(code, 0, screen)
            self.assertTrue(terminal.typed, screen)
            self.assertIn(f"openai API key for proxy key {pk} (Acme): ", screen)
            self.assertIn(f"Stored the openai key of proxy key {pk} (Acme), encrypted.", screen)
            self.assertNotIn("MARKER", screen)
            self.assertEqual(opened(BOX_1), {(pk, "openai"): OPENAI_MARKER})

        return support.as_deferred(go())

    def test_ctrl_c_at_the_prompt_cancels(self) -> defer.Deferred[None]:
        """Ctrl-C at the prompt ends the command at once, exit 1, and nothing is stored."""

        async def go() -> None:
            pk = (await create_proxy_key(await create_key("Platform")))["id"]
            terminal = _Terminal(b"openai API key for proxy key", b"\x03")
            reactor.spawnProcess(
                terminal,
                support.MAJORDOMO_BIN,
                [support.MAJORDOMO_BIN, "proxy-keys", "set-provider", pk, "--provider", "openai"],
                env=support.test_env(**with_key()),
                usePTY=True,
            )
            code = await terminal.done
            screen = terminal.screen.decode()
            self.assertEqual(code, 1, screen)
            self.assertIn("majordomo: cancelled", screen)
            self.assertEqual(sealed_rows(), [])

        return support.as_deferred(go())
