"""
Many concurrent SSE streams against one URL: do they all complete, and does
any stall?  Opens N streams spread evenly over R seconds, each asking the
fake upstream (bench/upstream.py) for C chunks D ms apart, and records for
every content chunk its receive time and its send time (the `<i@t>` stamp the
upstream puts in the text; same monotonic clock).

A stream is complete when it got status 200, all C chunks in order and the
end of the stream; it is stall-free when it is complete and no gap between
two consecutive chunks exceeded 3 x D.  Prints one JSON line (`STREAMS {...}`):
counts, chunk latency (received - sent) percentiles, the largest gaps, time to
first chunk, and the largest gap on the sending side (the harness's own lag).

    .venv/bin/python bench/streams.py --port 9000 --streams 500 --chunks 100 \
        --interval-ms 20 --ramp 2 [--key mdm_sk_...] [--provider openai|anthropic]

Used by bench/run.py (`make bench`).  Run it in its own process: a client in
the proxy's process would take the proxy's CPU.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from twisted.internet import protocol, reactor

MARK = re.compile(rb"<(\d+)@([\d.]+)>")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Stream(protocol.Protocol):
    """One streamed request over its own connection (Connection: close)."""

    def __init__(self, request: bytes, result: dict[str, Any]) -> None:
        self.request, self.result = request, result
        self.head, self.raw, self.events = b"", b"", b""
        self.chunked: bool | None = None
        self.left = 0
        self.last_recv = self.last_sent = 0.0

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.result["started"] = time.monotonic()
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        now = time.monotonic()
        if self.chunked is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].lower(), self.head[end + 4 :]
            self.result["status"] = int(head.split(b" ", 2)[1])
            self.chunked = b"transfer-encoding: chunked" in head
        self.body(self.dechunk(data) if self.chunked else data, now)

    def dechunk(self, data: bytes) -> bytes:
        """Strips chunked framing; left > 0: payload bytes due, < 0: CRLF bytes due."""
        raw = self.raw + data if self.raw else data
        out, pos, end, left = [], 0, len(raw), self.left
        while pos < end:
            if left > 0:
                stop = min(end, pos + left)
                out.append(raw[pos:stop])
                left, pos = left - (stop - pos), stop
                left = left or -2
            elif left < 0:
                step = min(-left, end - pos)
                left, pos = left + step, pos + step
            else:
                line = raw.find(b"\r\n", pos)
                if line < 0:
                    break
                left, pos = int(raw[pos:line].split(b";")[0], 16), line + 2
                if not left:
                    self.result["eof"] = True
                    break
        self.raw, self.left = raw[pos:], left
        return b"".join(out)

    def body(self, data: bytes, now: float) -> None:
        *events, self.events = (self.events + data).split(b"\n\n")
        result = self.result
        for event in events:
            mark = MARK.search(event)
            if mark is None:
                if b"[DONE]" in event or b"message_stop" in event:
                    result["done"] = True
                continue
            index, sent = int(mark.group(1)), float(mark.group(2))
            if index != result["chunks"]:
                result["out_of_order"] = True
            result["chunks"] = index + 1
            result["latencies"].append(now - sent)
            if self.last_recv:
                gap, sent_gap = now - self.last_recv, sent - self.last_sent
                if gap > result["max_gap"]:
                    result["max_gap"] = gap
                if sent_gap > result["max_sent_gap"]:
                    result["max_sent_gap"] = sent_gap
            else:
                result["ttfc"] = now - result["started"]
            self.last_recv, self.last_sent = now, sent

    def connectionLost(self, reason: Any) -> None:
        self.result["ended"] = time.monotonic()


def http_request(args: argparse.Namespace) -> bytes:
    path = "/v1/messages" if args.provider == "anthropic" else "/v1/chat/completions"
    model = "claude-3-5-haiku-20241022" if args.provider == "anthropic" else "gpt-4o-mini"
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "Count"}]}
    if args.provider == "anthropic":
        body["max_tokens"] = args.chunks
    data = json.dumps(body).encode()
    auth = "Authorization: Bearer sk-bench"
    if args.provider == "anthropic":
        auth = "x-api-key: sk-ant-bench"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Majordomo-Key: {args.key}\r\n{auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        f"X-Bench-Chunks: {args.chunks}\r\nX-Bench-Interval-Ms: {args.interval_ms}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + data


def summarise(args: argparse.Namespace, results: list[dict[str, Any]], wall: float) -> dict:
    interval = args.interval_ms / 1000
    complete = [
        r
        for r in results
        if r["status"] == 200 and r["chunks"] == args.chunks and r["done"] and not r["out_of_order"]
    ]
    stall_free = [r for r in complete if r["max_gap"] <= 3 * interval]
    latencies = [x for r in results for x in r["latencies"]]
    gaps = [r["max_gap"] for r in results if r["chunks"] > 1]
    ttfc = [r["ttfc"] for r in results if "ttfc" in r]
    ms = 1000.0
    return {
        "streams": len(results),
        "chunks": args.chunks,
        "interval_ms": args.interval_ms,
        "ramp_s": args.ramp,
        "complete": len(complete),
        "stall_free": len(stall_free),
        "statuses": sorted({r["status"] for r in results}),
        "chunks_received": sum(r["chunks"] for r in results),
        "latency_ms": {q: percentile(latencies, q) * ms for q in (50, 99, 99.9, 100)},
        "max_gap_ms": {q: percentile(gaps, q) * ms for q in (50, 99, 100)},
        "ttfc_ms": {q: percentile(ttfc, q) * ms for q in (50, 99, 100)},
        "max_sent_gap_ms": max((r["max_sent_gap"] for r in results), default=0) * ms,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--ramp", type=float, default=2.0, help="seconds over which streams start")
    parser.add_argument("--provider", choices=("openai", "anthropic"), default="openai")
    args = parser.parse_args()
    request = http_request(args)
    results: list[dict[str, Any]] = []
    begun = time.monotonic()
    deadline = args.ramp + args.chunks * args.interval_ms / 1000 + 60

    def start(result: dict[str, Any]) -> None:
        factory = protocol.ClientFactory.forProtocol(lambda: Stream(request, result))
        factory.clientConnectionFailed = lambda connector, reason: finished(result)  # type: ignore
        reactor.connectTCP("127.0.0.1", args.port, factory, timeout=30)

    def finished(result: dict[str, Any]) -> None:
        result.setdefault("ended", time.monotonic())

    def check() -> None:
        if all("ended" in r for r in results) or time.monotonic() - begun > deadline:
            reactor.stop()
        else:
            reactor.callLater(0.1, check)

    for i in range(args.streams):
        result: dict[str, Any] = {"status": 0, "chunks": 0, "done": False, "eof": False}
        result.update(out_of_order=False, latencies=[], max_gap=0.0, max_sent_gap=0.0)
        results.append(result)
        reactor.callLater(i * args.ramp / args.streams, start, result)
    reactor.callLater(0.5, check)
    reactor.run()
    print("STREAMS " + json.dumps(summarise(args, results, time.monotonic() - begun)), flush=True)


if __name__ == "__main__":
    main()
