"""
What the tests share: a real PostgreSQL test database, a fake provider served
by a real HTTP server on loopback, and a running gateway wired to both.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import psycopg2
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.interfaces import IAddress
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from majordomo.config import Config, PostgresConfig, load_config
from majordomo.db.schema import schema_sql

PG_HOST = os.environ.get("MAJORDOMO_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MAJORDOMO_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MAJORDOMO_TEST_PG_USER", "postgres")
TEST_DATABASE = os.environ.get("MAJORDOMO_TEST_DATABASE", f"majordomo_test_{os.getpid()}")
MAJORDOMO_BIN = os.path.join(os.path.dirname(sys.executable), "majordomo")
TWISTD_BIN = os.path.join(os.path.dirname(sys.executable), "twistd")

_created = False


def pg_config(database: str = TEST_DATABASE) -> PostgresConfig:
    return PostgresConfig(host=PG_HOST, port=PG_PORT, user=PG_USER, database=database)


def _connect(database: str) -> Any:
    connection = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database)
    connection.autocommit = True
    return connection


def drop_database(name: str) -> None:
    admin = _connect("postgres")
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def fresh_database() -> None:
    """Once per test run: a new database with the schema, dropped at exit."""
    global _created
    if not _created:
        drop_database(TEST_DATABASE)
        admin = _connect("postgres")
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{TEST_DATABASE}"')
        admin.close()
        run_sql(schema_sql())
        _created = True
        import atexit

        atexit.register(drop_database, TEST_DATABASE)
    # CASCADE: tables that reference api_keys (a key's policy) are emptied with it.
    run_sql(
        "TRUNCATE api_keys, llm_requests, llm_requests_metadata_keys, policy_windows, "
        "proxy_keys, proxy_key_providers CASCADE"
    )


def run_sql(statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run SQL synchronously on the test database (test setup and assertions only)."""
    connection = _connect(TEST_DATABASE)
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


def test_env(**extra: str) -> dict[str, str]:
    """Environment for a gateway or CLI process pointed at the test database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAJORDOMO_")}
    env.update(
        # Each gateway or command gets a spool of its own, so no test replays another's.
        MAJORDOMO_STORAGE_SPOOL_DIR=tempfile.mkdtemp(prefix="majordomo-spool-"),
        MAJORDOMO_STORAGE_POSTGRES_HOST=PG_HOST,
        MAJORDOMO_STORAGE_POSTGRES_PORT=str(PG_PORT),
        MAJORDOMO_STORAGE_POSTGRES_USER=PG_USER,
        MAJORDOMO_STORAGE_POSTGRES_DATABASE=TEST_DATABASE,
        MAJORDOMO_PRICING_REMOTE_URL="",
    )
    env.update(extra)
    return env


@dataclasses.dataclass
class Canned:
    """One recorded upstream answer: status, headers and body chunks."""

    status: int = 200
    headers: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"Content-Type": "application/json"}
    )
    chunks: list[bytes] = dataclasses.field(default_factory=list)
    chunk_delay: float = 0.0
    gzip: bool = False


class FakeProvider(Resource):
    """
    A provider API on loopback: records every request it receives and answers
    with the next canned response (the default one when none is queued).
    """

    isLeaf = True

    def __init__(self, default: Canned | None = None) -> None:
        super().__init__()
        self.default = default or Canned(chunks=[b"{}"])
        self.queue: list[Canned] = []
        self.received: list[dict[str, Any]] = []

    def render(self, request: Any) -> Any:
        self.received.append(
            {
                "method": request.method.decode(),
                "uri": request.uri.decode(),
                "headers": {
                    k.decode().lower(): [v.decode() for v in vs]
                    for k, vs in request.requestHeaders.getAllRawHeaders()
                },
                "body": request.content.read(),
            }
        )
        canned = self.queue.pop(0) if self.queue else self.default
        request.setResponseCode(canned.status)
        for name, value in canned.headers.items():
            request.setHeader(name, value)
        if canned.gzip:
            # As real providers do when the client accepts gzip: a compressed
            # body with its compressed Content-Length.
            body = gzip.compress(b"".join(canned.chunks))
            request.setHeader("Content-Encoding", "gzip")
            request.setHeader("Content-Length", str(len(body)))
            return body
        if not canned.chunk_delay:
            return b"".join(canned.chunks)
        self._send(request, list(canned.chunks), canned.chunk_delay)
        return NOT_DONE_YET

    def _send(self, request: Any, chunks: list[bytes], delay: float) -> None:
        if request.channel is None:
            return
        if not chunks:
            request.finish()
            return
        request.write(chunks.pop(0))
        reactor.callLater(delay, self._send, request, chunks, delay)


class SwitchableUpstream(protocol.ServerFactory):
    """
    What listens where the gateway's configuration points the providers:
    each connection it accepts is handed to C{serving} (a L{Site}, or any
    protocol factory, for faults below HTTP), which a test may replace, so a
    test chooses its upstream without touching the gateway.

    C{serving} is never started or stopped (a L{Site} then keeps no access log
    and no timer).  A connection stays with the factory that accepted it, so
    replace C{serving} before the gateway makes its first upstream request.
    """

    noisy = False

    def __init__(self, serving: protocol.Factory) -> None:
        self.serving = serving

    def buildProtocol(self, addr: IAddress) -> protocol.Protocol | None:
        return self.serving.buildProtocol(addr)


def quiet_site(resource: Resource) -> Site:
    """A L{Site} serving C{resource} that logs no start and stop lines."""
    site = Site(resource)
    site.noisy = False
    return site


def listen(resource: Resource) -> Any:
    """Serve C{resource} on a free loopback port; returns the listening port."""
    return reactor.listenTCP(0, quiet_site(resource), interface="127.0.0.1")


def gateway_config(upstream_port: int, **env: str) -> Config:
    """A gateway configuration: test database, every provider at the fake upstream."""
    base = f"http://127.0.0.1:{upstream_port}"
    settings = {
        "MAJORDOMO_SERVER_PORT": "0",
        "MAJORDOMO_STORAGE_FLUSH_INTERVAL": "0.05",
        "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": base,
        "MAJORDOMO_PROVIDERS_ANTHROPIC_BASE_URL": base,
        "MAJORDOMO_PROVIDERS_GEMINI_BASE_URL": base,
        "MAJORDOMO_PROVIDERS_AZURE_BASE_URL": base,
    }
    return load_config(
        env=test_env(**{**settings, **env}),
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll C{predicate} every 20 ms until it returns something truthy."""
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        await task.deferLater(reactor, 0.02, lambda: None)


def chat_completion(model: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    """An OpenAI chat.completion body as the API returns it."""
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1764170112,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello!"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    ).encode()


def as_deferred(coroutine: Any) -> defer.Deferred[Any]:
    return defer.Deferred.fromCoroutine(coroutine)


async def sleep(seconds: float) -> None:
    """Let the reactor run for C{seconds}."""
    await task.deferLater(reactor, seconds, lambda: None)


def create_key(env: dict[str, str], name: str) -> str:
    """Create an API key with the real `majordomo keys create`; returns the plaintext key."""
    created = subprocess.run(
        [MAJORDOMO_BIN, "keys", "create", "--name", name],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"Key:  (\S+)", created)
    assert match is not None, created
    return match.group(1)
