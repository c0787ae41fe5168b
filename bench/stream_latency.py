"""
How much delay the gateway adds to each chunk of a stream, and whether its
memory grows with the stream.

One process runs a paced SSE upstream (N chunks, D ms apart, then a usage
chunk and [DONE]) and a client that timestamps every event it receives; the
gateway runs as a real `twistd -n majordomo` process in between.  Every chunk's
latency (received - sent, same clock) is measured directly against the
upstream and through the gateway, and the gateway's RSS is sampled from /proc.

    .venv/bin/python bench/stream_latency.py [--chunks 2000] [--interval-ms 5]

Needs the local PostgreSQL (it uses a database `majordomo_bench`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import BIN, DATABASE, create_key, free_port  # noqa: E402


class PacedStream(Resource):
    """An OpenAI-style SSE stream: chunk i carries its index and send time."""

    isLeaf = True

    def __init__(self, chunks: int, interval: float) -> None:
        super().__init__()
        self.chunks, self.interval = chunks, interval

    def render_POST(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"text/event-stream")
        loop = task.LoopingCall(self._send, request, iter(range(self.chunks)))
        loop.start(self.interval).addErrback(lambda f: None)
        request.notifyFinish().addBoth(lambda _: loop.running and loop.stop())
        return NOT_DONE_YET

    def _send(self, request: Any, indexes: Any) -> None:
        i = next(indexes, None)
        if i is None:
            usage = {"prompt_tokens": 10, "completion_tokens": self.chunks, "total_tokens": 0}
            final = {"model": "gpt-4o-mini-2024-07-18", "choices": [], "usage": usage}
            request.write(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")
            request.finish()
            raise StopIteration
        event = {
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "delta": {"content": f"{i}:{time.monotonic():.6f}"}}],
        }
        request.write(b"data: " + json.dumps(event).encode() + b"\n\n")


class TimingClient(protocol.Protocol):
    """Sends one request; records (sent, received) for every content event."""

    def __init__(self, request: bytes) -> None:
        self.request, self.buffer, self.latencies = request, b"", []
        self.done: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        now = time.monotonic()
        self.buffer += data
        *events, self.buffer = self.buffer.split(b"\n\n")
        for event in events:
            start = event.find(b'"content": "')
            if start >= 0:
                sent = float(event[start + 12 :].split(b'"', 1)[0].split(b":")[1])
                self.latencies.append(now - sent)

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(None)


def http_request(key: str) -> bytes:
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": []}).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Majordomo-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode() + body


async def stream_once(port: int, key: str) -> list[float]:
    client = TimingClient(http_request(key))
    await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port)
    await client.done
    return client.latencies


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def summary(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[int(len(ms) * 0.99) - 1]
    return f"n={len(ms)} p50={statistics.median(ms):.3f}ms p99={p99:.3f}ms max={ms[-1]:.3f}ms"


async def main(args: argparse.Namespace) -> None:
    upstream = reactor.listenTCP(
        0, Site(PacedStream(args.chunks, args.interval_ms / 1000)), interface="127.0.0.1"
    )
    up_port = upstream.getHost().port
    gw_port = free_port()
    env = {
        **os.environ,
        "MAJORDOMO_STORAGE_POSTGRES_HOST": "127.0.0.1",
        "MAJORDOMO_STORAGE_POSTGRES_DATABASE": DATABASE,
        "MAJORDOMO_SERVER_PORT": str(gw_port),
        "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": f"http://127.0.0.1:{up_port}",
        "MAJORDOMO_PRICING_REMOTE_URL": "",
    }
    subprocess.run([f"{BIN}/majordomo", "db", "init"], env=env, check=True, capture_output=True)
    key = create_key(env)
    gateway = subprocess.Popen(
        [f"{BIN}/twistd", "--nodaemon", "--pidfile=", "majordomo"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", gw_port), timeout=0.1).close()
                break
            except OSError:
                await task.deferLater(reactor, 0.1, lambda: None)
        await stream_once(gw_port, key)  # warm up (imports, pools)
        direct = await stream_once(up_port, key)
        rss_before = rss_kb(gateway.pid)
        samples: list[int] = []
        sampler = task.LoopingCall(lambda: samples.append(rss_kb(gateway.pid)))
        sampler.start(0.05)
        via = await stream_once(gw_port, key)
        sampler.stop()
        print(f"chunks={args.chunks} interval={args.interval_ms}ms")
        print(f"direct:  {summary(direct)}")
        print(f"gateway: {summary(via)}")
        added = [b - a for a, b in zip(sorted(direct), sorted(via), strict=False)]
        print(
            f"added (quantile-matched): p50={statistics.median(added) * 1000:.3f}ms "
            f"max={max(added) * 1000:.3f}ms"
        )
        print(
            f"gateway RSS: before={rss_before} KB, during max={max(samples)} KB, "
            f"after={rss_kb(gateway.pid)} KB"
        )
    finally:
        gateway.terminate()
        gateway.wait()
        await upstream.stopListening()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    task.react(lambda _: defer.Deferred.fromCoroutine(main(parser.parse_args())))
