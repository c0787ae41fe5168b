"""
The C{majordomo} command as a user runs it: a real process against the test
database, output compared with what the getting-started guide shows.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer, utils
from twisted.trial.unittest import TestCase

from tests import support

KEY_CREATED = re.compile(
    r"\AAPI Key created successfully!\n"
    r"\n"
    r"  ID:   (?P<id>[0-9a-f-]{36})\n"
    r"  Name: (?P<name>.*)\n"
    r"  Key:  (?P<key>mdm_sk_[A-Za-z0-9_-]{40,})\n"
    r"\n"
    r"\u26a0\ufe0f  Save this key now - it cannot be retrieved later.\n\Z"
)


async def majordomo(*args: str, **env: str) -> tuple[str, str, int]:
    """Run ./bin/majordomo with C{args}; returns (stdout, stderr, exit code)."""
    out, err, code = await utils.getProcessOutputAndValue(
        support.MAJORDOMO_BIN, args, env=support.test_env(**env)
    )
    return out.decode(), err.decode(), code


class KeysCommandTests(TestCase):
    """C{majordomo keys ...}, as in the guide's Step 4 and "Managing API Keys"."""

    def setUp(self) -> None:
        support.fresh_database()

    async def _create(self, name: str = "Development") -> dict[str, str]:
        out, err, code = await majordomo("keys", "create", "--name", name)
        self.assertEqual((err, code), ("", 0))
        match = KEY_CREATED.match(out)
        self.assertIsNotNone(match, out)
        assert match is not None
        return match.groupdict()

    def test_create_prints_key_once_and_stores_only_hash(self) -> defer.Deferred[None]:
        """
        `keys create --name` prints exactly the guide's block; the database
        holds the SHA-256 of the key and never the key itself.
        """

        async def go() -> None:
            created = await self._create()
            self.assertEqual(created["name"], "Development")
            import hashlib

            rows = support.run_sql("SELECT id::text, name, key_hash, is_active FROM api_keys")
            self.assertEqual(
                rows,
                [
                    (
                        created["id"],
                        "Development",
                        hashlib.sha256(created["key"].encode()).hexdigest(),
                        True,
                    )
                ],
            )
            dump = repr(support.run_sql("SELECT * FROM api_keys"))
            self.assertNotIn(created["key"], dump)
            self.assertNotIn(created["key"][len("mdm_sk_") :], dump)

        return support.as_deferred(go())

    def test_list_get_update_revoke(self) -> defer.Deferred[None]:
        """`keys list`, `keys get`, `keys update` and `keys revoke` show and change the key."""

        async def go() -> None:
            created = await self._create()
            out, _, code = await majordomo("keys", "list")
            self.assertEqual(code, 0)
            self.assertIn(created["id"], out)
            self.assertIn("Development", out)
            self.assertIn("active", out)
            self.assertNotIn(created["key"], out)

            out, _, code = await majordomo(
                "keys", "update", created["id"], "--name", "Prod", "--description", "live"
            )
            self.assertEqual(code, 0)
            out, _, code = await majordomo("keys", "get", created["id"])
            self.assertEqual(code, 0)
            self.assertIn("Name:        Prod", out)
            self.assertIn("Description: live", out)
            self.assertIn("Status:      active", out)

            out, _, code = await majordomo("keys", "revoke", created["id"])
            self.assertEqual(code, 0)
            self.assertIn("revoked", out)
            out, _, _ = await majordomo("keys", "get", created["id"])
            self.assertIn("Status:      revoked", out)
            self.assertEqual(
                support.run_sql("SELECT is_active, revoked_at IS NOT NULL FROM api_keys"),
                [(False, True)],
            )

        return support.as_deferred(go())

    def test_unknown_key_id(self) -> defer.Deferred[None]:
        """A key id that does not exist (or is not a UUID) is one clear error line."""

        async def go() -> None:
            for key_id in ("00000000-0000-0000-0000-000000000000", "nonsense"):
                out, err, code = await majordomo("keys", "revoke", key_id)
                self.assertEqual((out, code), ("", 1))
                self.assertEqual(err, f"majordomo: no API key with id {key_id}\n")

        return support.as_deferred(go())

    def test_create_requires_name(self) -> defer.Deferred[None]:
        """`keys create` without --name is a usage error and creates nothing."""

        async def go() -> None:
            _, err, code = await majordomo("keys", "create")
            self.assertEqual(code, 2)
            self.assertIn("--name is required", err)
            self.assertEqual(support.run_sql("SELECT count(*) FROM api_keys"), [(0,)])

        return support.as_deferred(go())

    def test_database_unreachable(self) -> defer.Deferred[None]:
        """With PostgreSQL unreachable the command says so in one line, quickly."""

        async def go() -> None:
            _, err, code = await majordomo("keys", "list", MAJORDOMO_STORAGE_POSTGRES_PORT="1")
            self.assertEqual(code, 1)
            self.assertTrue(err.startswith("majordomo: PostgreSQL error: "), err)
            self.assertEqual(err.count("\n"), 1)

        return support.as_deferred(go())

    def test_config_error(self) -> defer.Deferred[None]:
        """A bad configuration value is one line naming the key."""

        async def go() -> None:
            _, err, code = await majordomo("keys", "list", MAJORDOMO_STORAGE_POSTGRES_PORT="five")
            self.assertEqual(code, 1)
            self.assertEqual(
                err,
                "majordomo: configuration error: storage.postgres.port: "
                "expected a whole number, got 'five'\n",
            )

        return support.as_deferred(go())


class DbInitTests(TestCase):
    """C{majordomo db init} creates the database when missing and applies the schema."""

    def test_creates_database_and_is_idempotent(self) -> defer.Deferred[None]:
        """
        Run twice against a database that does not exist: the first run creates
        it with all three tables, the second changes nothing and succeeds.
        """
        name = support.TEST_DATABASE + "_init"
        support.drop_database(name)
        self.addCleanup(support.drop_database, name)

        async def go() -> None:
            env: dict[str, Any] = {"MAJORDOMO_STORAGE_POSTGRES_DATABASE": name}
            out, err, code = await majordomo("db", "init", **env)
            self.assertEqual((err, code), ("", 0))
            self.assertIn(f"Created database {name}.", out)
            out, err, code = await majordomo("db", "init", **env)
            self.assertEqual((err, code), ("", 0))
            self.assertNotIn("Created", out)
            self.assertIn("Schema applied", out)
            import psycopg2

            connection = psycopg2.connect(
                host=support.PG_HOST, port=support.PG_PORT, user=support.PG_USER, dbname=name
            )
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'public' ORDER BY 1"
                )
                tables = [r[0] for r in cursor.fetchall()]
            connection.close()
            self.assertEqual(
                tables,
                [
                    "api_keys",
                    "key_policies",
                    "llm_requests",
                    "llm_requests_metadata_keys",
                    "policy_windows",
                    "proxy_key_providers",
                    "proxy_keys",
                ],
            )

        return support.as_deferred(go())
