"""Configuration: the guide's file and env vars work; every bad value is one clear line."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from majordomo.config import ConfigError, load_config

GUIDE_YAML = """\
server:
  host: "127.0.0.1"
  port: 7680

storage:
  postgres:
    host: localhost
    port: 5432
    user: postgres
    password: your_password
    database: majordomo
"""


class ConfigTests(SynchronousTestCase):
    """load_config as the gateway and the CLI use it."""

    def write(self, text: str, name: str = "majordomo.yaml") -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_guide_file_from_current_directory(self) -> None:
        """The guide's majordomo.yaml, found in the current directory, is read as written."""
        path = self.write(GUIDE_YAML)
        config = load_config(env={}, cwd=os.path.dirname(path))
        self.assertEqual((config.server.host, config.server.port), ("127.0.0.1", 7680))
        pg = config.storage.postgres
        self.assertEqual(
            (pg.host, pg.port, pg.user, pg.password, pg.database),
            ("localhost", 5432, "postgres", "your_password", "majordomo"),
        )
        self.assertNotIn("your_password", repr(config))

    def test_guide_env_vars(self) -> None:
        """The guide's MAJORDOMO_STORAGE_POSTGRES_* variables override the file."""
        path = self.write(GUIDE_YAML)
        env = {
            "MAJORDOMO_STORAGE_POSTGRES_HOST": "db.internal",
            "MAJORDOMO_STORAGE_POSTGRES_PORT": "6543",
            "MAJORDOMO_STORAGE_POSTGRES_USER": "gw",
            "MAJORDOMO_STORAGE_POSTGRES_PASSWORD": "pw",
            "MAJORDOMO_STORAGE_POSTGRES_DATABASE": "mdm",
            "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": "http://127.0.0.1:9999",
            "MAJORDOMO_PRICING_REFRESH_INTERVAL": "5m",
        }
        config = load_config(path, env=env)
        pg = config.storage.postgres
        self.assertEqual(
            (pg.host, pg.port, pg.user, pg.password, pg.database),
            ("db.internal", 6543, "gw", "pw", "mdm"),
        )
        self.assertEqual(config.providers.base_url("openai"), "http://127.0.0.1:9999")
        self.assertEqual(config.pricing.refresh_interval, 300.0)

    def test_defaults(self) -> None:
        """With no file at all the gateway listens on 127.0.0.1:7680 and uses the real providers."""
        config = load_config(env={}, cwd=self.mktemp())
        self.assertEqual((config.server.host, config.server.port), ("127.0.0.1", 7680))
        self.assertEqual(config.providers.base_url("openai"), "https://api.openai.com")
        self.assertEqual(config.providers.base_url("anthropic"), "https://api.anthropic.com")
        self.assertEqual(
            config.providers.base_url("gemini"), "https://generativelanguage.googleapis.com"
        )
        self.assertEqual(config.providers.base_url("azure"), "")
        self.assertEqual(config.pricing.refresh_interval, 3600.0)

    def assertConfigError(
        self, message: str, text: str = "", env: dict[str, str] | None = None
    ) -> None:
        path = self.write(text)
        with self.assertRaises(ConfigError) as caught:
            load_config(path, env=env or {})
        self.assertEqual(str(caught.exception), message)

    def test_unknown_key(self) -> None:
        """A misspelt key stops startup, naming the key."""
        self.assertConfigError("server.prot: unknown key", "server:\n  prot: 80\n")
        self.assertConfigError("databse: unknown key", "databse: {}\n")

    def test_wrong_type(self) -> None:
        """A value of the wrong type names the key and the value."""
        self.assertConfigError(
            "server.port: expected a whole number, got 'abc'", "server:\n  port: abc\n"
        )
        self.assertConfigError(
            "storage.postgres.port: expected a whole number, got 'x'",
            env={"MAJORDOMO_STORAGE_POSTGRES_PORT": "x"},
        )
        self.assertConfigError("storage: expected a mapping of keys", "storage: 5\n")

    def test_impossible_value(self) -> None:
        """Values that cannot work (a port above 65535, a zero batch, a non-URL) are refused."""
        self.assertConfigError(
            "server.port: must be a port number between 0 and 65535 (got 70000)",
            "server:\n  port: 70000\n",
        )
        self.assertConfigError(
            "storage.batch_size: must be greater than 0 (got 0)", "storage:\n  batch_size: 0\n"
        )
        self.assertConfigError(
            "providers.openai.base_url: must be an http:// or https:// URL (got 'api.openai.com')",
            "providers:\n  openai:\n    base_url: api.openai.com\n",
        )

    def test_invalid_yaml(self) -> None:
        """A file that is not YAML is named with the line of the problem."""
        path = self.write("server:\n  port: [\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path, env={})
        self.assertIn("is not valid YAML", str(caught.exception))
        self.assertIn(path, str(caught.exception))

    def test_missing_explicit_file(self) -> None:
        """--config naming a file that does not exist is an error, not a silent default."""
        with self.assertRaises(ConfigError) as caught:
            load_config("/nonexistent/majordomo.yaml", env={})
        self.assertEqual(
            str(caught.exception), "--config: no such file: /nonexistent/majordomo.yaml"
        )

    def test_example_config_is_valid(self) -> None:
        """etc/majordomo.yaml, the commented example, loads and equals the defaults."""
        example = os.path.join(os.path.dirname(__file__), "..", "etc", "majordomo.yaml")
        self.assertEqual(load_config(example, env={}), load_config(env={}, cwd=self.mktemp()))
