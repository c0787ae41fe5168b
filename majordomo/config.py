# -*- test-case-name: tests.test_config -*-
"""
The gateway's configuration: a YAML file plus C{MAJORDOMO_<SECTION>_<KEY>}
environment overrides, turned into frozen dataclasses.

Every bad value stops startup with one L{ConfigError} line that names the key
(C{server.port}) and the problem.  An unknown key in the file is an error too:
a typo must never silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import reprlib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from majordomo import config_checks as checks

CONFIG_FILE_NAME = "majordomo.yaml"
SYSTEM_CONFIG_PATH = "/etc/majordomo/majordomo.yaml"
ENV_PREFIX = "MAJORDOMO_"


class ConfigError(Exception):
    """A configuration value is missing, unknown or impossible."""


def _setting(default: Any, check: typing.Callable[[Any], str | None] | None = None) -> Any:
    """A leaf setting with its default and an optional check returning a problem."""
    return field(default=default, metadata={"check": check})


def _section(cls: type) -> Any:
    return field(default_factory=cls)


@dataclass(frozen=True)
class ServerConfig:
    host: str = _setting("127.0.0.1")
    port: int = _setting(7680, checks.port_number)
    max_body_size: int = _setting(32 * 1024 * 1024, checks.positive)  # bytes; larger gets 413
    # To receive a whole request head, from its first byte: a client that
    # trickles its head in is answered 408 and closed.
    head_timeout: float = _setting(30.0, checks.positive)
    body_timeout: float = _setting(60.0, checks.positive)  # to receive a whole request body
    shutdown_timeout: float = _setting(30.0, checks.positive)  # to let in-flight requests finish
    reuse_port: bool = _setting(False)


@dataclass(frozen=True)
class PostgresConfig:
    host: str = _setting("localhost")
    port: int = _setting(5432, checks.port_number)
    user: str = _setting("postgres")
    password: str = field(default="", repr=False, metadata={"check": None})  # never logged
    database: str = _setting("majordomo")
    pool_size: int = _setting(4, checks.positive)
    connect_timeout: float = _setting(5.0, checks.positive)

    def dsn_parameters(self, database: str | None = None) -> dict[str, Any]:
        """Keyword arguments for C{psycopg2.connect}; the password only if set."""
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": database or self.database,
            "connect_timeout": max(1, int(self.connect_timeout)),
            "application_name": "majordomo",
        }
        if self.password:
            params["password"] = self.password
        return params


@dataclass(frozen=True)
class StorageConfig:
    postgres: PostgresConfig = _section(PostgresConfig)
    batch_size: int = _setting(500, checks.positive)
    flush_interval: float = _setting(0.2, checks.positive)
    spool_dir: str = _setting("")  # "" = <state directory>/spool
    spool_max_bytes: int = _setting(1024 * 1024 * 1024, checks.positive)
    # Records held in memory; the rest wait on disk.
    memory_queue_limit: int = _setting(10000, checks.positive)

    def spool_path(self, env: Mapping[str, str] | None = None) -> str:
        """Where records wait for PostgreSQL: spool_dir, else under the state directory."""
        if self.spool_dir:
            return self.spool_dir
        env = os.environ if env is None else env
        state = env.get("STATE_DIRECTORY", "").split(":")[0]  # set by systemd's StateDirectory=
        if not state:
            base = env.get("XDG_STATE_HOME") or os.path.join(
                os.path.expanduser("~"), ".local", "state"
            )
            state = os.path.join(base, "majordomo")
        return os.path.join(state, "spool")


@dataclass(frozen=True)
class ProviderConfig:
    base_url: str = _setting("", checks.base_url)


def _provider(base_url: str) -> Any:
    return field(default_factory=lambda: ProviderConfig(base_url=base_url))


@dataclass(frozen=True)
class ProvidersConfig:
    openai: ProviderConfig = _provider("https://api.openai.com")
    anthropic: ProviderConfig = _provider("https://api.anthropic.com")
    gemini: ProviderConfig = _provider("https://generativelanguage.googleapis.com")
    azure: ProviderConfig = _provider("")

    def base_url(self, provider: str) -> str:
        """The configured upstream base URL of C{provider} ("" when not configured)."""
        config: ProviderConfig = getattr(self, provider)
        return config.base_url.rstrip("/")


@dataclass(frozen=True)
class UpstreamConfig:
    connect_timeout: float = _setting(10.0, checks.positive)
    response_timeout: float = _setting(600.0, checks.positive)
    idle_timeout: float = _setting(300.0, checks.positive)  # longest silence inside a response body
    max_connections_per_host: int = _setting(256, checks.positive)


@dataclass(frozen=True)
class PricingConfig:
    remote_url: str = _setting("https://www.llm-prices.com/current-v1.json", checks.url)
    refresh_interval: float = _setting(3600.0, checks.positive)
    overrides_file: str = _setting("")


@dataclass(frozen=True)
class LoggingConfig:
    body_storage: str = _setting("none", checks.body_storage)
    max_body_size: int = _setting(1024 * 1024, checks.positive)  # bytes kept per body (postgres)


@dataclass(frozen=True)
class S3Config:
    enabled: bool = _setting(False)
    bucket: str = _setting("")
    region: str = _setting("us-east-1")
    endpoint: str = _setting("", checks.url)  # S3-compatible storage (MinIO, R2, ...); "" = AWS
    # Empty: the AWS default credential chain (env, profile, instance role).
    access_key_id: str = field(default="", repr=False, metadata={"check": None})
    secret_access_key: str = field(default="", repr=False, metadata={"check": None})
    upload_threads: int = _setting(4, checks.positive)


@dataclass(frozen=True)
class PoliciesConfig:
    # When a key's limits cannot be checked (PostgreSQL away and this gateway's
    # leases used up or expired): refuse with 503, or let requests through uncounted.
    when_unavailable: str = _setting("deny", checks.when_unavailable)
    lease_ttl: float = _setting(60.0, checks.positive)  # seconds a gateway's unrenewed lease lives


@dataclass(frozen=True)
class SecretsConfig:
    # Seals provider keys at rest (majordomo.vault.configured_box); "" = proxy keys off.
    encryption_key: str = field(default="", repr=False, metadata={"check": checks.encryption_key})
    # During a rotation: comma-separated keys that may still have sealed stored rows.
    previous_encryption_keys: str = field(
        default="", repr=False, metadata={"check": checks.encryption_keys}
    )


@dataclass(frozen=True)
class Config:
    server: ServerConfig = _section(ServerConfig)
    storage: StorageConfig = _section(StorageConfig)
    providers: ProvidersConfig = _section(ProvidersConfig)
    upstream: UpstreamConfig = _section(UpstreamConfig)
    pricing: PricingConfig = _section(PricingConfig)
    logging: LoggingConfig = _section(LoggingConfig)
    s3: S3Config = _section(S3Config)
    policies: PoliciesConfig = _section(PoliciesConfig)
    secrets: SecretsConfig = _section(SecretsConfig)

    def __post_init__(self) -> None:
        if bool(self.s3.access_key_id) != bool(self.s3.secret_access_key):
            raise ConfigError(
                "s3.access_key_id and s3.secret_access_key: give both, or neither "
                "(to use the AWS default credential chain)"
            )
        if self.logging.body_storage == "s3" and not (self.s3.enabled and self.s3.bucket):
            raise ConfigError("logging.body_storage: s3 needs s3.enabled: true and an s3.bucket")


# Values and keys quoted in a message: one line, about 100 characters at most,
# whatever they hold (a YAML alias can make a few bytes a value of millions).
_QUOTE = reprlib.Repr()
_QUOTE.maxstring = _QUOTE.maxother = 80
_QUOTE.maxlist = _QUOTE.maxdict = _QUOTE.maxtuple = _QUOTE.maxset = 4
_QUOTE.maxlevel = 2


def _shown(value: Any) -> str:
    """C{value} quoted for a one-line message, briefly."""
    return _QUOTE.repr(value)


def _key(name: Any) -> str:
    """A key as a message names it: as written when that is one short line, else quoted."""
    if isinstance(name, str) and name.isprintable() and len(name) <= 80:
        return name
    return _shown(name)


def _coerce(key: str, kind: type, value: Any, from_env: bool) -> Any:
    """Turn C{value} into C{kind} or raise a L{ConfigError} naming C{key}."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_env and str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return str(value).lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {_shown(value)}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and re.fullmatch(r"\s*-?\d+\s*", str(value)):
            return int(value)
        raise ConfigError(f"{key}: expected a whole number, got {_shown(value)}")
    if kind is float:
        # Floats are durations or sizes: a number of seconds, or "250ms", "5m", "1h".
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        seconds = checks.duration_seconds(value) if isinstance(value, str) else None
        if seconds is not None:
            return seconds
        raise ConfigError(
            f"{key}: expected a number of seconds (or 250ms, 30s, 5m, 1h), got {_shown(value)}"
        )
    if kind is str:
        if isinstance(value, str):
            return _text(key, value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {_shown(value)}")
    raise TypeError(f"unsupported setting type {kind!r}")


def _text(key: str, value: str) -> str:
    """
    C{value}, if every library it reaches can take it: no NUL, and no lone
    surrogate (what Python makes of an environment variable that is not
    UTF-8, or of a YAML C{"\\ud800"}).  The value is not shown: it may be a secret.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{key}: not valid UTF-8 text") from None
    if "\0" in value:
        raise ConfigError(f"{key}: must not hold a NUL character")
    return value


def _build(base: Any, values: Any, prefix: str, env: Mapping[str, str]) -> Any:
    """Copy of the dataclass instance C{base} with a YAML mapping and env overrides applied."""
    cls = type(base)
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'configuration'}: expected a mapping of keys")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name in values:
        if name not in known:
            raise ConfigError(f"{prefix}{_key(name)}: unknown key")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, spec in known.items():
        key = prefix + name
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(getattr(base, name), values.get(name), key + ".", env)
            continue
        env_name = ENV_PREFIX + key.replace(".", "_").upper()
        if env_name in env:
            value = _coerce(key, kind, env[env_name], from_env=True)
        elif name in values:
            value = _coerce(key, kind, values[name], from_env=False)
        else:
            continue
        check = spec.metadata.get("check")
        problem = check(value) if check else None
        if problem:  # a secret (repr=False) is never shown
            shown = f" (got {_shown(value)})" if spec.repr else ""
            raise ConfigError(f"{key}: {problem}{shown}")
        kwargs[name] = value
    return dataclasses.replace(base, **kwargs)


def find_config_file(explicit: str | None = None, cwd: str | None = None) -> str | None:
    """
    The configuration file to read: C{explicit} if given (it must exist), else
    C{majordomo.yaml} in the current directory, else the system-wide file, else
    None (defaults and environment only).
    """
    if explicit:
        if not os.path.isfile(explicit):
            raise ConfigError(f"--config: no such file: {explicit}")
        return explicit
    local = os.path.join(cwd or os.getcwd(), CONFIG_FILE_NAME)
    for candidate in (local, SYSTEM_CONFIG_PATH):
        if os.path.isfile(candidate):
            return candidate
    return None


def load_config(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Config:
    """Read the configuration the way the gateway and the CLI both do."""
    source = find_config_file(path, cwd)
    values = {} if source is None else _read_yaml(source)
    return typing.cast(Config, _build(Config(), values, "", os.environ if env is None else env))


def _read_yaml(source: str) -> Any:
    """The document in C{source}; a L{ConfigError} for any reason it cannot be used."""
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{source}: cannot be read ({e.strerror})") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{source}: not UTF-8 (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    try:
        return _parse_yaml(source, text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where} is not valid YAML") from e
    except ConfigError:
        raise
    except Exception as e:
        # PyYAML's constructors fail with whatever their parsing raises:
        # ValueError on "!!int x", IndexError on "!!int ''", KeyError on
        # "!!bool x", AttributeError on "!!timestamp x", RecursionError on
        # nesting too deep.  Whichever it is, the file is what is wrong.
        raise ConfigError(f"{source}: is not valid YAML ({type(e).__name__})") from e


def _parse_yaml(source: str, text: str) -> Any:
    """The one YAML document in C{text} (C{{}} if none), checked for duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        _refuse_duplicate_keys(source, node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_duplicate_keys(source: str, root: yaml.Node) -> None:
    """
    A key given twice in one mapping is an error: which of the two was meant?
    Each node is looked at once, so aliases (even one that holds itself)
    cost nothing more.
    """
    pending: list[tuple[yaml.Node, str]] = [(root, "")]
    visited: set[int] = set()
    while pending:
        node, prefix = pending.pop()
        if id(node) in visited or not isinstance(node, yaml.MappingNode):
            continue
        visited.add(id(node))
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
                continue
            key = prefix + _key(key_node.value)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ConfigError(f"{source}: line {line}: {key}: duplicate key (given twice)")
            seen.add(key)
            pending.append((value_node, key + "."))


_MERGE = "tag:yaml.org,2002:merge"  # "<<: *defaults" merges a mapping; not a key
