"""
Issue 15: no plaintext provider key, proxy key or encryption key anywhere at
rest.  A real gateway (in process, proxy keys enabled, bodies stored in S3
on moto's loopback server, or in PostgreSQL) is given marker provider keys
through L{ProxyKeyStore} and through `majordomo proxy-keys set-provider`;
requests carry the proxy key in every place a client puts a provider key
(Bearer, x-api-key, x-goog-api-key, api-key, ?key=), as JSON and as streams,
and some are refused.  Then a C{pg_dump} of the database, every spool file,
every log event, every stored body and C{GET /metrics} are searched for each
marker, for the proxy keys and for the encryption key.
"""

from __future__ import annotations

import gzip
import json
import os
from typing import Any

import treq
from twisted.internet import defer, threads, utils
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface import provider

from majordomo.proxykeys.store import PROXY_KEY_PREFIX, ProxyKeyStore
from majordomo.vault import SecretBox
from tests import support
from tests.gateway_case import GatewayTestCase
from tests.test_bodies_gateway import S3_ENV, _s3
from tests.test_proxykeys_cli import majordomo_fed
from tests.vectors import VECTORS, load_vector

ENCRYPTION_KEY = "c0ffee4a7e57d1ce" * 4
MARKERS = {
    "openai": "sk-proj-ATREST-openai-7f3a9c",
    "anthropic": "sk-ant-ATREST-anthropic-51be",
    "gemini": "AIza-ATREST-gemini-0d42e8",  # stored through the CLI
    "azure": "ATREST-azure-9b6d11",
}
AZURE = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
# (vector, target or None for the vector's own, where the proxy key goes)
FORWARDED = [
    ("01_openai_chat_nonstream_basic", None, "Authorization"),
    ("03_openai_chat_stream_include_usage", None, "Authorization"),
    ("17_anthropic_nonstream_basic", None, "x-api-key"),
    ("20_anthropic_stream_cache_5m_1h_and_read", None, "x-api-key"),
    ("25_gemini_generate_nonstream_thoughts", None, "x-goog-api-key"),
    ("25_gemini_generate_nonstream_thoughts", None, "?key="),
    ("26_gemini_stream_sse_thoughts", None, "?key="),
    ("01_openai_chat_nonstream_basic", AZURE, "api-key"),
]


def _with_credential(target: str, place: str, credential: str) -> tuple[str, dict[str, str]]:
    """C{target} and the headers that carry C{credential} in C{place}."""
    if place == "?key=":
        return target + ("&" if "?" in target else "?") + "key=" + credential, {}
    if place == "Authorization":
        return target, {"Authorization": f"Bearer {credential}"}
    return target, {place.replace("-", "_"): credential}


def _lock_requests() -> Any:
    """A connection holding llm_requests locked (until it is closed): no row can be written."""
    connection = support._connect(support.TEST_DATABASE)
    connection.autocommit = False
    with connection.cursor() as cursor:
        cursor.execute("LOCK TABLE llm_requests IN ACCESS EXCLUSIVE MODE")
    return connection


class AtRestCase(GatewayTestCase):
    """
    The requests and the search; subclasses choose where bodies are stored
    and run L{nothing_at_rest} as their test.
    """

    timeout = 60

    def setUp(self) -> defer.Deferred[None]:
        self.events: list[str] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            failure = event.get("log_failure")
            trace = failure.getTraceback() if failure is not None else ""
            self.events.append(f"{formatEvent(event)}\n{event!r}\n{trace}")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return super().setUp()

    async def _start(self) -> None:
        await super()._start()
        self.cli_output: list[str] = []
        box = SecretBox.from_hex(ENCRYPTION_KEY)
        self.box = box
        store = ProxyKeyStore(self.gateway.db, box)
        key_id = self.key_id
        full, self.proxy_key = await store.create(key_id, "customer-at-rest")
        for name in ("openai", "anthropic", "azure"):
            await store.set_provider(full.id, name, MARKERS[name])
        await self.set_provider_by_cli(full.id, "gemini", MARKERS["gemini"])
        openai_only, self.openai_only_key = await store.create(key_id, "openai only")
        await self.set_provider_by_cli(openai_only.id, "openai", MARKERS["openai"])
        revoked, self.revoked_key = await store.create(key_id, "revoked")
        await store.set_provider(revoked.id, "openai", MARKERS["openai"])
        await store.revoke(revoked.id)
        self.unknown_key = PROXY_KEY_PREFIX + "ATRESTunknownProxyKey0123456789abcdefABCDEF"
        await support.wait_for(lambda: self.gateway.key_cache.trusted)

    async def set_provider_by_cli(self, proxy_key_id: str, name: str, secret: str) -> None:
        """`majordomo proxy-keys set-provider`, the provider key on stdin; its output kept."""
        out, err, code = await majordomo_fed(
            secret + "\n",
            "proxy-keys",
            "set-provider",
            proxy_key_id,
            "--provider",
            name,
            MAJORDOMO_SECRETS_ENCRYPTION_KEY=ENCRYPTION_KEY,
        )
        self.assertEqual(code, 0, (out, err))
        self.cli_output.append(out + err)

    async def send_forwarded(self) -> int:
        """Every forwarded request, JSON and stream; how many rows they make."""
        post = self.post
        key = self.key
        for name, target, place in FORWARDED:
            vector = load_vector(f"{VECTORS}/{name}.json")
            self.upstream.queue.append(
                support.Canned(
                    status=vector["response_status"],
                    headers={"Content-Type": vector["response_content_type"]},
                    chunks=[vector["response_body"].encode()],
                )
            )
            path, headers = _with_credential(
                target or vector["request_path"], place, self.proxy_key
            )
            response, body = await post(
                path, vector["request_body"], X_Majordomo_Key=key, **headers
            )
            self.assertEqual(response.code, 200, (name, place, body))
        return len(FORWARDED)

    async def send_refused(self) -> int:
        """Requests refused for their proxy key; how many rows they make."""
        post = self.post
        key = self.key
        refused = [
            ("/v1/chat/completions", "Authorization", self.revoked_key),
            ("/v1/messages", "x-api-key", self.openai_only_key),
            ("/v1beta/models/gemini-2.5-flash:generateContent", "?key=", self.unknown_key),
            ("/v1beta/models/gemini-2.5-flash:generateContent", "x-goog-api-key", self.revoked_key),
        ]
        for route, place, credential in refused:
            path, headers = _with_credential(route, place, credential)
            response, body = await post(path, {"model": "m"}, X_Majordomo_Key=key, **headers)
            self.assertEqual(response.code, 401, (route, place, body))
        return len(refused)

    async def pg_dump(self) -> bytes:
        out, err, code = await utils.getProcessOutputAndValue(
            "pg_dump",
            ["-h", support.PG_HOST, "-p", str(support.PG_PORT), "-U", support.PG_USER]
            + [support.TEST_DATABASE],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, err)
        return bytes(out)

    def spool_files(self) -> dict[str, bytes]:
        found = {}
        spool = self.gateway.config.storage.spool_path()
        for folder, _, files in os.walk(spool):
            for name in files:
                with open(os.path.join(folder, name), "rb") as f:
                    found[os.path.join(folder, name)] = f.read()
        return found

    def journal_holds(self, count: int) -> dict[str, bytes] | None:
        """The spool's files once its journal holds C{count} records, else None."""
        files = self.spool_files()
        lines = sum(data.count(b"\n") for path, data in files.items() if path.endswith(".jsonl"))
        return files if lines >= count else None

    async def stored_bodies(self, rows: list[dict[str, Any]]) -> dict[str, bytes]:
        """Where this gateway stores bodies, each body as text (subclasses)."""
        raise NotImplementedError

    def forbidden(self) -> dict[str, bytes]:
        """What must be nowhere: each marker, each proxy key, the encryption key."""
        texts = {f"{name} provider key": secret for name, secret in MARKERS.items()}
        for label, key in [
            ("proxy key", self.proxy_key),
            ("openai-only proxy key", self.openai_only_key),
            ("revoked proxy key", self.revoked_key),
            ("unknown proxy key", self.unknown_key),
        ]:
            texts[label] = key
            texts[label + " without its prefix"] = key.removeprefix(PROXY_KEY_PREFIX)
        texts["the mdm_pk_ prefix"] = PROXY_KEY_PREFIX
        texts["encryption key"] = ENCRYPTION_KEY
        forbidden = {label: text.encode() for label, text in texts.items()}
        for name, secret in MARKERS.items():  # a secret column holding the plaintext's hex
            forbidden[f"{name} provider key as hex"] = secret.encode().hex().encode()
        forbidden["encryption key in upper case"] = ENCRYPTION_KEY.upper().encode()
        return forbidden

    def nothing_at_rest(self) -> defer.Deferred[None]:
        """
        After JSON and stream requests through every credential place and
        refused ones, no marker, proxy key or encryption key is in the
        database dump, the spool, the log, the stored bodies, /metrics or
        the CLI's output; the places searched do hold what they should.
        """

        async def go() -> None:
            # While llm_requests is locked the records wait in the spool's journal.
            locker = await threads.deferToThread(_lock_requests)
            try:
                expected = await self.send_forwarded()
                spooled = await support.wait_for(lambda: self.journal_holds(expected))
            finally:
                await threads.deferToThread(locker.close)
            expected += await self.send_refused()
            rows = await self.rows(expected)
            self.assertEqual(len(rows), expected)
            with_proxy_key = [r for r in rows if r["proxy_key_id"] is not None]
            self.assertEqual(len(with_proxy_key), len(FORWARDED) + 1)
            self.assertEqual(
                sorted(r["status_code"] for r in rows),
                [200] * len(FORWARDED) + [401] * (expected - len(FORWARDED)),
            )
            bodies = await self.stored_bodies(rows)
            metrics, _ = await self.http_get("/metrics")
            dump = await self.pg_dump()
            places = {
                "pg_dump": dump,
                "log": "\n".join(self.events).encode(),
                "/metrics": metrics,
                "cli output": "\n".join(self.cli_output).encode(),
                **{f"{path} (while PostgreSQL waited)": data for path, data in spooled.items()},
                **self.spool_files(),
                **bodies,
            }
            check = self.assertIn
            check(b"COPY public.proxy_key_providers", dump)
            check(self.box.fingerprint.encode(), dump)
            check(b"\\\\x01", dump)  # a sealed secret, as bytea hex
            check(b"majordomo_requests_total", metrics)
            check(b"/v1/chat/completions", places["log"])
            for place, text in places.items():
                for label, secret in self.forbidden().items():
                    at = text.lower().find(secret.lower())
                    self.assertEqual(
                        at, -1, f"{label} in {place}: {text[max(at - 200, 0) : at + 60]!r}"
                    )

        return support.as_deferred(go())

    async def http_get(self, path: str) -> tuple[bytes, int]:
        response = await self.http.get(self.url + path)
        return await treq.content(response), response.code


class S3AtRestTests(AtRestCase):
    """Bodies in S3 (moto on loopback): every object, gunzipped, is searched too."""

    gateway_env = {**S3_ENV, "MAJORDOMO_SECRETS_ENCRYPTION_KEY": ENCRYPTION_KEY}

    def setUp(self) -> defer.Deferred[None]:
        from moto.server import ThreadedMotoServer

        port = int(S3_ENV["MAJORDOMO_S3_ENDPOINT"].rsplit(":", 1)[1])
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.moto.start()
        self.addCleanup(self.moto.stop)
        _s3().create_bucket(Bucket="majordomo-logs")
        return super().setUp()

    async def stored_bodies(self, rows: list[dict[str, Any]]) -> dict[str, bytes]:
        keys = {r["s3_key"] for r in rows if r["s3_key"]}
        self.assertEqual(len(keys), len(FORWARDED))  # refused requests store no body

        def objects() -> dict[str, bytes]:
            client = _s3()
            listed = client.list_objects_v2(Bucket="majordomo-logs").get("Contents", [])
            return {
                item["Key"]: client.get_object(Bucket="majordomo-logs", Key=item["Key"])[
                    "Body"
                ].read()
                for item in listed
            }

        found: dict[str, bytes] = {}
        for _ in range(100):
            found = await threads.deferToThread(objects)
            if set(found) >= keys:
                break
            await support.sleep(0.1)
        # The bucket may hold other tests' objects (one S3 server for the run): ours are all there.
        self.assertEqual(set(found) & keys, keys)
        bodies = {f"s3 {key}": gzip.decompress(found[key]) for key in keys}
        self.assertTrue(all(b'"request"' in body for body in bodies.values()))
        return bodies

    def test_nothing_at_rest(self) -> defer.Deferred[None]:
        return self.nothing_at_rest()


class PostgresAtRestTests(AtRestCase):
    """Bodies in the rows (logging.body_storage: postgres), searched in the dump."""

    gateway_env = {
        "MAJORDOMO_LOGGING_BODY_STORAGE": "postgres",
        "MAJORDOMO_SECRETS_ENCRYPTION_KEY": ENCRYPTION_KEY,
    }

    async def stored_bodies(self, rows: list[dict[str, Any]]) -> dict[str, bytes]:
        stored = [r for r in rows if r["request_body"] and r["response_body"]]
        self.assertGreaterEqual(len(stored), len(FORWARDED))
        return {"request and response bodies": json.dumps(stored).encode()}

    def test_nothing_at_rest(self) -> defer.Deferred[None]:
        return self.nothing_at_rest()
