"""
A fast fake LLM provider for the benchmarks: a minimal HTTP/1.1 server on a
raw Twisted protocol (keep-alive, no twisted.web), so that it costs far less
CPU per request than the proxies measured through it.

- `POST .../v1/messages` answers as Anthropic, any other path as OpenAI
  (chat/completions).  Answers are precomputed bytes with real usage objects
  and priced model names, so the gateway parses and prices them for real.
- A body with `"stream": true` gets a paced SSE stream (chunked encoding):
  `X-Bench-Chunks` content chunks (default 100), the first at once and then one
  every `X-Bench-Interval-Ms` ms (default 50; scheduled against the start
  time, so timer lateness does not accumulate), then a final usage chunk and
  the end (`[DONE]` / `message_stop`).  Each content chunk's text is
  `<i@t>` with t = time.monotonic() when sent (CLOCK_MONOTONIC is system-wide,
  so a client in another process can compute per-chunk latency).  One timer
  paces all streams and chunks go straight to the socket, so that the harness
  itself can feed tens of thousands of chunks a second.

    .venv/bin/python bench/upstream.py --port 9000

Used by bench/run.py (`make bench`); prints `listening on PORT` when ready.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from typing import Any

from twisted.internet import protocol, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

OPENAI_MODEL = "gpt-4o-mini-2024-07-18"
ANTHROPIC_MODEL = "claude-3-5-haiku-20241022"


def _response(body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


OPENAI_ANSWER = _response(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1764170112,
        "model": OPENAI_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_bench",
    }
)
ANTHROPIC_ANSWER = _response(
    {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": ANTHROPIC_MODEL,
        "content": [{"type": "text", "text": "Hello! How can I help you today?"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 19,
            "output_tokens": 10,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def _event(payload: dict[str, Any], name: str | None = None) -> bytes:
    data = (f"event: {name}\n" if name else "") + "data: " + json.dumps(payload) + "\n\n"
    return data.encode()


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def openai_chunk(text: str) -> bytes:
    return _event(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1764170112,
            "model": OPENAI_MODEL,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
    )


def openai_end(chunks: int) -> bytes:
    usage = {"prompt_tokens": 19, "completion_tokens": chunks, "total_tokens": 19 + chunks}
    final = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764170112}
    final.update(model=OPENAI_MODEL, choices=[], usage=usage)
    return _event(final) + b"data: [DONE]\n\n"


def anthropic_start() -> bytes:
    message = {"id": "msg_bench", "type": "message", "role": "assistant", "content": []}
    message.update(model=ANTHROPIC_MODEL, usage={"input_tokens": 19, "output_tokens": 1})
    return _event({"type": "message_start", "message": message}, "message_start")


def anthropic_chunk(text: str) -> bytes:
    delta = {"type": "content_block_delta", "index": 0}
    delta["delta"] = {"type": "text_delta", "text": text}
    return _event(delta, "content_block_delta")


def anthropic_end(chunks: int) -> bytes:
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    delta["usage"] = {"output_tokens": chunks}
    return _event(delta, "message_delta") + _event({"type": "message_stop"}, "message_stop")


def _header(head: bytes, name: bytes, default: bytes = b"") -> bytes:
    start = head.find(b"\r\n" + name + b":")
    if start < 0:
        return default
    end = head.find(b"\r\n", start + 2)
    return head[start + len(name) + 3 : end if end >= 0 else None].strip()


# (before, after) the text of a content chunk, to build each chunk cheaply.
OPENAI_CHUNK = openai_chunk("TEXT").split(b"TEXT")
ANTHROPIC_CHUNK = anthropic_chunk("TEXT").split(b"TEXT")


class Pacer:
    """
    One timer for every open stream: a heap of (due, n, stream); each wake-up
    sends every chunk that is due.  Chunks go straight to the socket
    (one send() each) while the connection's own buffer is empty.
    """

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, FakeProvider]] = []
        self.counter = 0
        self.timer: Any = None
        self.armed = 0.0  # monotonic time the timer fires at

    def add(self, due: float, stream: FakeProvider) -> None:
        self.counter += 1
        heapq.heappush(self.heap, (due, self.counter, stream))
        if self.timer is None or due < self.armed - 0.0005:
            self._arm()

    def _arm(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.heap:
            self.armed = self.heap[0][0]
            self.timer = reactor.callLater(max(0.0, self.armed - time.monotonic()), self._fire)

    def _fire(self) -> None:
        self.timer = None
        horizon = time.monotonic() + 0.0002
        heap = self.heap
        while heap and heap[0][0] <= horizon:
            _, _, stream = heapq.heappop(heap)
            stream.tick()
        self._arm()


PACER = Pacer()


class FakeProvider(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self.buffer = b""
        self.streaming = self.gone = False
        self.direct = True

    def send(self, data: bytes) -> None:
        if self.direct:
            try:
                sent = self.transport.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                return
            if sent == len(data):
                return
            self.direct, data = False, data[sent:]
        self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while not self.streaming:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = int(_header(head, b"content-length", b"0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.close = _header(head, b"connection") == b"close"
            self.anthropic = b"/v1/messages" in head[: head.find(b"\r\n")]
            if b'"stream": true' in body or b'"stream":true' in body:
                self.chunks = int(_header(head, b"x-bench-chunks", b"100"))
                self.interval = float(_header(head, b"x-bench-interval-ms", b"50")) / 1000
                self.streaming, self.index, self.t0 = True, 0, time.monotonic()
                start = _chunked(anthropic_start()) if self.anthropic else b""
                self.send(STREAM_HEAD + start)
                self.tick()
            else:
                self.send(ANTHROPIC_ANSWER if self.anthropic else OPENAI_ANSWER)
                if self.close:
                    self.transport.loseConnection()

    def tick(self) -> None:
        if self.gone:
            return
        i = self.index
        if i < self.chunks:
            before, after = ANTHROPIC_CHUNK if self.anthropic else OPENAI_CHUNK
            event = before + b"<%d@%.6f>" % (i, time.monotonic()) + after
            self.send(b"%x\r\n%s\r\n" % (len(event), event))
            self.index = i + 1
            PACER.add(self.t0 + self.index * self.interval, self)
            return
        end = anthropic_end(self.chunks) if self.anthropic else openai_end(self.chunks)
        self.send(_chunked(end) + b"0\r\n\r\n")
        self.streaming = False
        if self.close:
            self.transport.loseConnection()
        elif self.buffer:
            self.dataReceived(b"")

    def connectionLost(self, reason: Any) -> None:
        self.gone = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    factory = protocol.Factory.forProtocol(FakeProvider)
    factory.noisy = False
    port = reactor.listenTCP(args.port, factory, backlog=4096, interface="127.0.0.1")
    print(f"listening on {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
