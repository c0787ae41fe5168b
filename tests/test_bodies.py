"""
Body storage as the guide describes it: gzip JSON objects in S3 (moto's real
S3 server on loopback) at the guide's keys, with secrets redacted, surviving
S3 outages and restarts on local disk with bounded memory, never touching
the reactor thread with boto3; and the postgres and none modes.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine
from typing import Any, cast

import boto3
from botocore.config import Config as BotoConfig
from moto.server import ThreadedMotoServer
from twisted.internet import defer, reactor, task, threads
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from majordomo.bodies.document import Exchange, object_key
from majordomo.bodies.parking import ParkedBodies
from majordomo.bodies.s3 import S3BodyStore
from majordomo.bodies.s3client import SharedClient, make_client
from majordomo.bodies.store import NoBodyStore, PostgresBodyStore, body_text, make_body_store
from majordomo.bodies.tuning import UploadTuning
from majordomo.config import Config, load_config
from majordomo.ledger.spool import Spool

BUCKET = "majordomo-logs"
KEY_ID = "a1b2c3d4-e5f6-7890-abcd-ef0123456789"
REQUEST_ID = "550e8400-e29b-41d4-a716-446655440000"
GUIDE_KEY = "a1b2c3d4-e5f6-78/2025-02-04/550e8400-e29b-41d4-a716-446655440000.json.gz"
ARRIVED = 1738683000.25  # 2025-02-04T15:30:00.25Z

CHAT_REQUEST = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello!"}]}
CHAT_RESPONSE = {
    "id": "chatcmpl-1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
}
SSE_RESPONSE = (
    'data: {"id":"chatcmpl-2","choices":[{"delta":{"content":"Hi"}}]}\n\n'
    'data: {"id":"chatcmpl-2","choices":[],"usage":{"prompt_tokens":9}}\n\n'
    "data: [DONE]\n\n"
)
SECRETS = {
    "Authorization": "Bearer sk-proj-authorization-secret",
    "X-Majordomo-Key": "mdm_sk_majordomo_secret",
    "x-api-key": "sk-ant-x-api-key-secret",
    "x-goog-api-key": "AIza-goog-header-secret",
    "api-key": "azure-api-key-secret",
    "Cookie": "session=cookie-secret",
    "Proxy-Authorization": "Basic proxy-secret",
}
QUERY_SECRET = "AIza-query-secret"

# Quick retries so outages and recoveries fit in a test.
FAST = {
    "attempts": 2,
    "backoff": 0.05,
    "retry_interval": 0.2,
    "connect_timeout": 2.0,
    "read_timeout": 10.0,
    "stop_timeout": 5.0,
}


def exchange(
    request_id: str = REQUEST_ID,
    path: str = "/v1/chat/completions",
    request_headers: list[tuple[str, str]] | None = None,
    request_body: bytes = json.dumps(CHAT_REQUEST).encode(),
    response_headers: list[tuple[str, str]] | None = None,
    response_body: bytes = json.dumps(CHAT_RESPONSE).encode(),
    method: str = "POST",
) -> Exchange:
    """A finished request of the test key, by default the guide's JSON chat completion."""
    return Exchange(
        request_id=request_id,
        key_id=KEY_ID,
        arrived=ARRIVED,
        method=method,
        path=path,
        request_headers=request_headers or [("Content-Type", "application/json")],
        request_body=request_body,
        status_code=200,
        response_headers=response_headers or [("Content-Type", "application/json")],
        response_body=response_body,
    )


def numbered(n: int) -> Exchange:
    """The n-th of several distinct exchanges."""
    return exchange(request_id=f"00000000-0000-7000-8000-{n:012d}")


def free_port() -> int:
    """A loopback port nothing listens on (for now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def as_deferred(coroutine: Coroutine[Any, Any, Any]) -> defer.Deferred[Any]:
    return defer.Deferred.fromCoroutine(coroutine)


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll C{predicate} every 20 ms until it is truthy; fail after C{timeout}."""
    deadline = reactor.seconds() + timeout
    while not (value := predicate()):
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        await task.deferLater(reactor, 0.02, lambda: None)
    return value


def body_files(spool_dir: str) -> list[str]:
    """The parked body files under C{spool_dir/bodies}."""
    found: list[str] = []
    for root, _dirs, files in os.walk(os.path.join(spool_dir, "bodies")):
        found.extend(os.path.join(root, name) for name in files if name.endswith(".body"))
    return sorted(found)


def read_parked(path: str) -> tuple[str, bytes]:
    """The key and object bytes of a parked body file."""
    return ParkedBodies(os.path.dirname(path), 0).read(path)


class S3Server:
    """moto's S3 server on a fixed loopback port, which can be started late and stopped."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._server: ThreadedMotoServer | None = None
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=BotoConfig(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def start(self) -> None:
        """Serve S3 with an empty bucket (moto's state is per process: reset it)."""
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        reset = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=10).read()
        self.client.create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server._server.server_close()  # type: ignore[union-attr]  # free the port
            self._server = None

    def get(self, key: str) -> dict[str, Any] | None:
        """The object at C{key} (body and headers), or None (blocking: call in a thread)."""
        try:
            found = self.client.get_object(Bucket=BUCKET, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return {
            "data": found["Body"].read(),
            "ContentType": found.get("ContentType"),
            "ContentEncoding": found.get("ContentEncoding"),
        }

    def keys(self) -> list[str]:
        """Every key in the bucket (blocking)."""
        listing = self.client.list_objects_v2(Bucket=BUCKET)
        return sorted(item["Key"] for item in listing.get("Contents", []))


class ThreadLog:
    """Which thread ran each blocking step: (step, thread id, thread name)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str]] = []

    def note(self, step: str) -> None:
        self.seen.append((step, threading.get_ident(), threading.current_thread().name))


class RecordingClient:
    """A boto3 S3 client that notes the thread of each PUT."""

    def __init__(self, real: Any, threads: ThreadLog) -> None:
        self._real = real
        self._threads = threads

    def put_object(self, **kwargs: Any) -> Any:
        self._threads.note("upload")
        return self._real.put_object(**kwargs)

    def close(self) -> None:
        self._real.close()


class RecordingParkedBodies(ParkedBodies):
    """Parked bodies that note the thread of each write."""

    def __init__(self, directory: str, max_bytes: int, threads: ThreadLog) -> None:
        super().__init__(directory, max_bytes)
        self._threads = threads

    def write(self, key: str, data: bytes) -> str:
        self._threads.note("park")
        return super().write(key, data)


class S3TestCase(TestCase):
    """A moto S3 server on a free port (started by the test) and a spool directory."""

    def setUp(self) -> None:
        werkzeug = logging.getLogger("werkzeug")
        self.addCleanup(werkzeug.setLevel, werkzeug.level)
        werkzeug.setLevel(logging.ERROR)  # no request log lines in the trial output
        self.s3 = S3Server(free_port())
        self.addCleanup(self.s3.stop)
        self.spool_dir = self.mktemp()
        os.makedirs(self.spool_dir)

    def config(self, endpoint: str | None = None, **env: str) -> Config:
        """A configuration read the gateway's way, from the guide's environment variables."""
        return load_config(
            env={
                "MAJORDOMO_LOGGING_BODY_STORAGE": "s3",
                "MAJORDOMO_S3_ENABLED": "true",
                "MAJORDOMO_S3_BUCKET": BUCKET,
                "MAJORDOMO_S3_REGION": "us-east-1",
                "MAJORDOMO_S3_ENDPOINT": endpoint or self.s3.endpoint,
                "MAJORDOMO_S3_ACCESS_KEY_ID": "testing",
                "MAJORDOMO_S3_SECRET_ACCESS_KEY": "testing",
                **env,
            },
            cwd=self.spool_dir,
        )

    def store(self, endpoint: str | None = None, **tuning: Any) -> S3BodyStore:
        """An S3 store made the gateway's way, stopped at the end of the test (before moto)."""
        settings = {**FAST, **tuning}
        made = make_body_store(self.config(endpoint), self.spool_dir, reactor, **settings)
        assert isinstance(made, S3BodyStore)
        self.addCleanup(made.stopService)
        return made

    def recording_store(self, threads: ThreadLog, **tuning: Any) -> S3BodyStore:
        """
        An S3 store whose boto3 client and parked bodies note the thread of
        each blocking step in C{threads}, stopped at the end of the test.
        """
        settings = UploadTuning(**{**FAST, **tuning})
        config = self.config().s3

        def make() -> Any:
            threads.note("client")
            real = make_client(config, settings.connect_timeout, settings.read_timeout)
            return RecordingClient(real, threads)

        directory = os.path.join(self.spool_dir, "bodies")
        store = S3BodyStore(
            config,
            self.spool_dir,
            reactor,
            tuning=settings,
            parked=RecordingParkedBodies(directory, settings.disk_bytes, threads),
            client=SharedClient(make),
        )
        self.addCleanup(store.stopService)
        return store

    async def object(self, key: str, timeout: float = 10.0) -> dict[str, Any]:
        """The object at C{key}, once it has arrived (polled for up to C{timeout})."""
        deadline = reactor.seconds() + timeout
        while True:
            found = await threads.deferToThread(self.s3.get, key)
            if found is not None:
                return found
            if reactor.seconds() > deadline:
                raise AssertionError(f"no S3 object at {key} after {timeout}s")
            await task.deferLater(reactor, 0.1, lambda: None)

    async def document(self, key: str) -> dict[str, Any]:
        found = await self.object(key)
        doc: dict[str, Any] = json.loads(gzip.decompress(found["data"]))
        return doc


class ObjectTests(S3TestCase):
    """What lands in S3, and where."""

    def setUp(self) -> None:
        super().setUp()
        self.s3.start()

    def test_object_at_guide_key_with_guide_structure(self) -> defer.Deferred[None]:
        """
        store() names the object as the guide does (first 16 characters of
        the key id / UTC date / request id .json.gz); the object is gzip JSON
        with exactly the guide's fields, JSON bodies embedded as JSON, and is
        marked application/json with gzip content encoding.
        """

        async def go() -> None:
            store = self.store()
            await store.startService()
            columns = store.store(exchange())
            self.assertEqual(columns, {"s3_key": GUIDE_KEY})
            self.assertEqual(object_key(exchange()), GUIDE_KEY)
            found = await self.object(GUIDE_KEY)
            self.assertEqual(found["ContentType"], "application/json")
            self.assertEqual(found["ContentEncoding"], "gzip")
            self.assertEqual(
                json.loads(gzip.decompress(found["data"])),
                {
                    "request_id": REQUEST_ID,
                    "timestamp": "2025-02-04T15:30:00Z",
                    "request": {
                        "method": "POST",
                        "path": "/v1/chat/completions",
                        "headers": {"Content-Type": "application/json"},
                        "body": CHAT_REQUEST,
                    },
                    "response": {
                        "status_code": 200,
                        "headers": {"Content-Type": "application/json"},
                        "body": CHAT_RESPONSE,
                    },
                },
            )
            await wait_for(lambda: store.pending == 0)
            self.assertEqual((store.uploaded, store.failures, store.parked), (1, 0, 0))

        return as_deferred(go())

    def test_event_stream_and_empty_bodies(self) -> defer.Deferred[None]:
        """
        A streamed (SSE) response is kept as the exact text the client got;
        an empty request body is null; text that is not JSON is a string.
        """

        async def go() -> None:
            store = self.store()
            await store.startService()
            streamed = exchange(
                response_headers=[("Content-Type", "text/event-stream")],
                response_body=SSE_RESPONSE.encode(),
            )
            key = store.store(streamed)["s3_key"]
            empty = store.store(
                exchange(
                    request_id=numbered(1).request_id,
                    method="GET",
                    request_body=b"",
                    response_body=b"not json \xff",
                )
            )["s3_key"]
            doc = await self.document(key)
            self.assertEqual(doc["response"]["body"], SSE_RESPONSE)
            self.assertEqual(doc["response"]["headers"], {"Content-Type": "text/event-stream"})
            self.assertEqual(doc["request"]["body"], CHAT_REQUEST)
            doc = await self.document(empty)
            self.assertIsNone(doc["request"]["body"])
            self.assertEqual(doc["response"]["body"], "not json \ufffd")

        return as_deferred(go())

    def test_no_secret_reaches_the_object(self) -> defer.Deferred[None]:
        """
        Credential headers (Authorization, X-Majordomo-Key, x-api-key,
        x-goog-api-key, api-key, Cookie, Proxy-Authorization, and Set-Cookie
        in the response) and a key= query parameter are REDACTED: none of
        their values appears anywhere in the decompressed object.
        """

        async def go() -> None:
            store = self.store()
            await store.startService()
            path = f"/v1beta/models/gemini-2.0-flash:generateContent?alt=sse&key={QUERY_SECRET}"
            key = store.store(
                exchange(
                    path=path,
                    request_headers=[("Content-Type", "application/json"), *SECRETS.items()],
                    response_headers=[
                        ("Content-Type", "application/json"),
                        ("Set-Cookie", "id=set-cookie-secret"),
                        ("set-cookie", "other=second-set-cookie-secret"),
                    ],
                )
            )["s3_key"]
            raw = gzip.decompress((await self.object(key))["data"])
            for secret in [*SECRETS.values(), QUERY_SECRET, "set-cookie-secret"]:
                self.assertNotIn(secret.encode(), raw)
            doc = json.loads(raw)
            self.assertEqual(
                doc["request"]["path"],
                "/v1beta/models/gemini-2.0-flash:generateContent?alt=sse&key=REDACTED",
            )
            self.assertEqual(
                doc["request"]["headers"],
                {"Content-Type": "application/json", **dict.fromkeys(SECRETS, "REDACTED")},
            )
            self.assertEqual(
                doc["response"]["headers"],
                {"Content-Type": "application/json", "Set-Cookie": "REDACTED"},
            )

        return as_deferred(go())

    def test_boto3_runs_only_in_the_upload_pool(self) -> defer.Deferred[None]:
        """
        The boto3 client is made and used only in threads of the store's own
        pool (named majordomo-s3), never on the reactor thread; parking on
        disk happens in a thread too.
        """

        async def go() -> None:
            seen = ThreadLog()
            store = self.recording_store(seen, memory_items=1)
            await store.startService()
            keys = [store.store(numbered(n))["s3_key"] for n in range(3)]  # two are parked
            for key in keys:
                await self.object(key)
            await wait_for(lambda: store.pending == 0)
            reactor_thread = threading.get_ident()
            steps = {step for step, _, _ in seen.seen}
            self.assertEqual(steps, {"client", "upload", "park"})
            for step, ident, name in seen.seen:
                self.assertNotEqual(ident, reactor_thread, step)
                pool = "majordomo-bodies-disk" if step == "park" else "majordomo-s3"
                self.assertIn(pool, name)
            self.assertEqual([s for s, _, _ in seen.seen].count("client"), 1)

        return as_deferred(go())

    def test_memory_bound_extra_bodies_wait_on_disk(self) -> defer.Deferred[None]:
        """
        With room in memory for one body, a burst of 20 never holds more
        than one in memory for upload: the other 19 are parked on disk, and
        all 20 objects still arrive.
        """

        async def go() -> None:
            store = self.store(memory_items=1)
            await store.startService()
            keys = []
            for n in range(20):
                keys.append(store.store(numbered(n))["s3_key"])
                self.assertLessEqual(store.in_memory, 1)
            self.assertEqual(store.pending, 20)
            for key in keys:
                await self.object(key)
            await wait_for(lambda: store.pending == 0)
            self.assertEqual(store.parked, 19)
            self.assertEqual(store.uploaded, 20)
            self.assertEqual(body_files(self.spool_dir), [])
            self.assertEqual(sorted(await threads.deferToThread(self.s3.keys)), sorted(keys))

        return as_deferred(go())

    def test_byte_budget_sends_large_bodies_to_disk(self) -> defer.Deferred[None]:
        """A body larger than the memory byte budget is parked at once and still arrives."""

        async def go() -> None:
            store = self.store(memory_bytes=100)
            await store.startService()
            key = store.store(exchange(response_body=b"x" * 1000))["s3_key"]
            self.assertEqual(store.in_memory, 0)
            doc = await self.document(key)
            self.assertEqual(doc["response"]["body"], "x" * 1000)
            self.assertEqual(store.parked, 1)

        return as_deferred(go())

    def test_stop_after_uploads_cleans_up(self) -> defer.Deferred[None]:
        """
        stopService() after the uploads returns promptly, stops both thread pools,
        and removes this process's (empty) directory of parked bodies.
        """

        async def go() -> None:
            store = self.store()
            await store.startService()
            await self.object(store.store(exchange())["s3_key"])
            started = time.monotonic()
            await store.stopService()
            self.assertLess(time.monotonic() - started, 2.0)
            for pool in (store._pool, store._disk_pool):
                self.assertFalse(pool.started)
                self.assertFalse([t for t in pool.threads if t.is_alive()])
            self.assertEqual(os.listdir(os.path.join(self.spool_dir, "bodies")), ["lock"])

        return as_deferred(go())


class OutageTests(S3TestCase):
    """S3 away: the row still gets its key, the body waits on disk, nothing is lost."""

    def test_s3_down_then_back(self) -> defer.Deferred[None]:
        """
        With nothing listening at the endpoint, store() still returns the key
        at once; after the quick retries the body is parked on disk; once S3
        listens there, the periodic retry uploads it and deletes the file.
        """

        async def go() -> None:
            store = self.store()
            await store.startService()
            started = time.perf_counter()
            columns = store.store(exchange())
            self.assertLess(time.perf_counter() - started, 0.2)
            self.assertEqual(columns, {"s3_key": GUIDE_KEY})
            self.assertEqual((store.pending, store.uploaded), (1, 0))
            await wait_for(lambda: store.on_disk == 1)
            self.assertEqual(len(body_files(self.spool_dir)), 1)
            self.assertGreaterEqual(store.failures, 2)
            self.assertEqual(store.pending, 1)

            await threads.deferToThread(self.s3.start)
            doc = await self.document(GUIDE_KEY)
            self.assertEqual(doc["request"]["body"], CHAT_REQUEST)
            await wait_for(lambda: store.pending == 0)
            self.assertEqual(body_files(self.spool_dir), [])

        return as_deferred(go())

    def test_bodies_parked_by_an_earlier_run_are_uploaded(self) -> defer.Deferred[None]:
        """
        Bodies parked by a store that then stopped (S3 never came back for
        it) are found by a new store on the same spool directory at startService()
        and uploaded.
        """

        async def go() -> None:
            first = self.store()
            await first.startService()
            keys = [first.store(numbered(n))["s3_key"] for n in range(3)]
            await wait_for(lambda: first.on_disk == 3)
            await first.stopService()
            self.assertEqual(len(body_files(self.spool_dir)), 3)

            await threads.deferToThread(self.s3.start)
            second = self.store()
            await second.startService()
            for key in keys:
                await self.object(key)
            await wait_for(lambda: second.pending == 0)
            self.assertEqual(body_files(self.spool_dir), [])

        return as_deferred(go())

    def test_bodies_held_in_memory_are_parked_at_stop(self) -> defer.Deferred[None]:
        """
        Bodies still in their quick retries when stopService() is called are
        written to disk rather than lost, and read back whole.
        """

        async def go() -> None:
            store = self.store(attempts=100, backoff=0.5)
            await store.startService()
            keys = {store.store(numbered(n))["s3_key"] for n in range(3)}
            await wait_for(lambda: store.failures >= 3)
            self.assertEqual(store.on_disk, 0)
            await store.stopService()
            found = {read_parked(path)[0] for path in body_files(self.spool_dir)}
            self.assertEqual(found, keys)

        return as_deferred(go())

    def test_record_spool_leaves_parked_bodies_alone(self) -> defer.Deferred[None]:
        """
        The record spool sharing the spool directory neither adopts nor
        removes parked bodies, whether their store is running or stopped.
        """

        async def go() -> None:
            store = self.store()
            await store.startService()
            store.store(exchange())
            await wait_for(lambda: store.on_disk == 1)
            for _ in range(2):
                spool = Spool(self.spool_dir, max_bytes=1024 * 1024)
                self.assertEqual(spool.open(), [])
                spool.close()
                self.assertEqual(len(body_files(self.spool_dir)), 1)
                await store.stopService()

        return as_deferred(go())

    def test_failures_warned_once_without_secrets(self) -> defer.Deferred[None]:
        """
        While S3 is down, many failed attempts give one warning, and no log
        event carries a secret or a body.
        """

        async def go() -> None:
            events: list[dict[str, Any]] = []
            observer = cast(ILogObserver, events.append)
            globalLogPublisher.addObserver(observer)
            self.addCleanup(globalLogPublisher.removeObserver, observer)
            store = self.store()
            await store.startService()
            for n in range(5):
                request = numbered(n)
                store.store(
                    exchange(
                        request_id=request.request_id,
                        path=f"/v1beta/models/m:generateContent?key={QUERY_SECRET}",
                        request_headers=list(SECRETS.items()),
                    )
                )
            await wait_for(lambda: store.on_disk == 5)
            text = "\n".join(formatEvent(e) or "" for e in events)
            self.assertEqual(text.count("S3 upload failed"), 1)
            for secret in [*SECRETS.values(), QUERY_SECRET, "Hello!", "gpt-4o"]:
                self.assertNotIn(secret, text)

        return as_deferred(go())

    def test_disk_full_too_holds_a_bounded_few_and_drops_loudly(self) -> defer.Deferred[None]:
        """
        With S3 down and no room on disk (disk_bytes tiny), at most
        memory_items bodies wait in memory; the rest are dropped, each
        counted and logged as critical (never silently), and the ones held
        reach S3 once it is back.
        """

        async def go() -> None:
            events: list[dict[str, Any]] = []
            observer = cast(ILogObserver, events.append)
            globalLogPublisher.addObserver(observer)
            self.addCleanup(globalLogPublisher.removeObserver, observer)
            store = self.store(memory_items=2, disk_bytes=10)
            await store.startService()
            keys = [store.store(numbered(n))["s3_key"] for n in range(4)]
            await wait_for(lambda: store.dropped == 2)
            self.assertEqual((store.pending, store.on_disk, store.parked), (2, 0, 0))
            self.assertLessEqual(store.in_memory, 2)
            critical = [e for e in events if e.get("log_level") == LogLevel.critical]
            self.assertEqual(len(critical), 2)
            self.assertEqual(body_files(self.spool_dir), [])

            await threads.deferToThread(self.s3.start)
            await wait_for(lambda: store.pending == 0)
            stored = await threads.deferToThread(self.s3.keys)
            self.assertEqual(len(stored), 2)
            self.assertLessEqual(set(stored), set(keys))
            self.assertEqual(store.dropped, 2)

        return as_deferred(go())

    def hanging_store(self) -> S3BodyStore:
        """
        A store whose endpoint accepts connections but never answers, so an
        upload hangs (stop_timeout 0.5 s); the cleanup resets the connection
        and waits for the stuck thread to end.
        """
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)  # never accepted: the upload waits for an answer
        self.addCleanup(hole.close)
        store = self.store(
            endpoint=f"http://127.0.0.1:{hole.getsockname()[1]}",
            stop_timeout=0.5,
            read_timeout=60.0,
        )

        async def release_stuck_thread() -> None:
            hole.close()  # resets the connection: the stuck upload fails and ends
            await wait_for(lambda: not [t for t in store._pool.threads if t.is_alive()])

        self.addCleanup(lambda: as_deferred(release_stuck_thread()))
        return store

    def assert_parked_and_stopped(self, store: S3BodyStore, key: str) -> None:
        """The body of C{key} is parked on disk, whole, and the store's pools are stopped."""
        files = body_files(self.spool_dir)
        self.assertEqual(len(files), 1)
        parked_key, data = read_parked(files[0])
        self.assertEqual(parked_key, key)
        self.assertEqual(json.loads(gzip.decompress(data))["request_id"], REQUEST_ID)
        self.assertFalse(store._pool.started)
        self.assertFalse(store._disk_pool.started)

    def test_stop_is_bounded_when_an_upload_hangs(self) -> defer.Deferred[None]:
        """
        With an upload hanging, stopService() still returns within about
        stop_timeout, parks a copy of that body on disk, and stops its
        thread pools.
        """

        async def go() -> None:
            store = self.hanging_store()
            await store.startService()
            key = store.store(exchange())["s3_key"]
            await task.deferLater(reactor, 0.3, lambda: None)
            self.assertEqual((store.pending, store.on_disk, store.failures), (1, 0, 0))
            started = time.monotonic()
            await store.stopService()
            self.assertLess(time.monotonic() - started, 3.0)
            self.assert_parked_and_stopped(store, key)

        return as_deferred(go())

    def test_stop_finishes_when_its_caller_gives_up(self) -> defer.Deferred[None]:
        """
        A caller that cancels stopService()'s Deferred (its own shorter timeout)
        does not cut the shutdown short: the body is still parked and the
        pools still stopped, within about stop_timeout.
        """

        async def go() -> None:
            store = self.hanging_store()
            await store.startService()
            key = store.store(exchange())["s3_key"]
            await task.deferLater(reactor, 0.3, lambda: None)
            started = time.monotonic()
            stopping = store.stopService()
            stopping.addTimeout(0.05, reactor)
            with self.assertRaises(defer.TimeoutError):
                await stopping
            await wait_for(lambda: not store._pool.started, timeout=3.0)
            self.assertLess(time.monotonic() - started, 3.0)
            self.assert_parked_and_stopped(store, key)

        return as_deferred(go())


class ModeTests(SynchronousTestCase):
    """The postgres and none modes, chosen by logging.body_storage."""

    def config(self, **env: str) -> Config:
        return load_config(env=env, cwd=self.mktemp())

    def test_postgres_mode_returns_both_columns_cut_on_a_character(self) -> None:
        """
        With body_storage postgres, store() returns request_body and
        response_body as text of at most logging.max_body_size bytes, cut
        before a character the limit would split; JSON stays its own text.
        """
        store = make_body_store(
            self.config(
                MAJORDOMO_LOGGING_BODY_STORAGE="postgres", MAJORDOMO_LOGGING_MAX_BODY_SIZE="8"
            ),
            self.mktemp(),
        )
        self.assertIsInstance(store, PostgresBodyStore)
        self.assertIsNone(store.startService())
        columns = store.store(exchange(request_body="aaaaaaaé".encode(), response_body=b'{"a":1}'))
        self.assertEqual(columns, {"request_body": "aaaaaaa", "response_body": '{"a":1}'})
        self.assertEqual(len(columns["request_body"].encode()), 7)
        self.assertEqual((store.pending, store.failures), (0, 0))
        self.assertIsNone(store.stopService())

    def test_body_text_edges(self) -> None:
        """
        Text for a row: undecodable bytes become U+FFFD, NUL (which
        PostgreSQL text refuses) too, the result never exceeds the limit in
        UTF-8 even when replacements are longer than the bytes they replace,
        and a body within the limit is kept whole.
        """
        self.assertEqual(body_text("héllo wörld".encode(), 100), "héllo wörld")
        self.assertEqual(body_text("héllo".encode(), 2), "h")
        self.assertEqual(body_text("héllo".encode(), 3), "hé")
        self.assertEqual(body_text(b"a\x00b", 10), "a\ufffdb")
        self.assertEqual(body_text(b"ab\xff", 10), "ab\ufffd")
        cut = body_text(b"\xff\xff\xff\xff", 4)
        self.assertEqual(cut, "\ufffd")
        self.assertLessEqual(len(cut.encode()), 4)
        self.assertEqual(body_text(b"", 4), "")
        self.assertEqual(body_text("€uro".encode(), 2), "")

    def test_none_mode_stores_nothing(self) -> None:
        """With body_storage none (the default), store() returns no column and nothing is kept."""
        store = make_body_store(self.config(), self.mktemp())
        self.assertIsInstance(store, NoBodyStore)
        self.assertEqual(store.store(exchange()), {})
        self.assertIsNone(store.startService())
        self.assertEqual((store.pending, store.failures), (0, 0))
        self.assertIsNone(store.stopService())

    def test_s3_mode_is_chosen_by_config(self) -> None:
        """With body_storage s3 and the guide's s3 section, the S3 store is made (not started)."""
        config = self.config(
            MAJORDOMO_LOGGING_BODY_STORAGE="s3",
            MAJORDOMO_S3_ENABLED="true",
            MAJORDOMO_S3_BUCKET=BUCKET,
        )
        store = make_body_store(config, self.mktemp())
        self.assertIsInstance(store, S3BodyStore)
        self.successResultOf(store.stopService())
