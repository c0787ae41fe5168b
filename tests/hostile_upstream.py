# -*- test-case-name: tests.test_bombs -*-
"""
A provider that means harm, as a process of its own: gzip bombs, newline
floods, endless streams, garbage and whatever usage object a test asks for.

Run it as C{python -m tests.hostile_upstream --port 0}: it prints
C{listening on PORT} once it accepts connections, then answers every request
(any path) according to its mode.  The mode and its parameters come from the
command line (the defaults) or, per request, from headers the gateway
forwards unchanged:

  - C{X-Hostile-Mode}: C{[gzip-]SHAPE}, where the C{gzip-} prefix sends the
    body gzip-encoded (C{Content-Encoding: gzip}) and SHAPE is one of
    L{SHAPES};
  - C{X-Hostile-Size}: how many bytes of filler the body carries (decoded);
  - C{X-Hostile-Usage}: the usage object (JSON text) the answer reports.

A body of gigabytes is never built: a compressed body is made of one deflate
segment of filler repeated (L{GzipBomb}), so a 1 GiB answer costs the server
1 MB of memory and a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet import reactor, task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "gpt-4o-mini"
DEFAULT_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
_BLOCK = 1 << 20  # filler is compressed in blocks of this size

# What a body looks like, decoded; see the module docstring.
SHAPES = (
    "chat",  # a normal answer: a chat completion, or an event stream if asked to stream
    "newlines",  # an event stream: SIZE newlines, a chunk, the usage chunk, [DONE]
    "crs",  # the same with carriage returns
    "events",  # the same with SIZE bytes of tiny events
    "json",  # a chat completion with SIZE bytes of whitespace before its usage member
    "dense",  # a chat completion with SIZE bytes of members ("k": 1, ...) before its usage
    "endless",  # an event stream of newlines that never ends
    "garbage",  # SIZE bytes that are neither gzip nor JSON
)


def chat_chunk(choices: bool = True, usage: Any = None) -> bytes:
    """One server-sent event of an OpenAI chat stream."""
    chunk: dict[str, Any] = {
        "id": "chatcmpl-hostile",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": "hi"}}] if choices else [],
    }
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def chat_completion_parts(usage: Any) -> tuple[bytes, bytes]:
    """A chat.completion body cut where filler may go: before its usage member."""
    head = json.dumps(
        {
            "id": "chatcmpl-hostile",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
        }
    ).encode()[:-1]
    return head + b",", b'"usage": ' + json.dumps(usage).encode() + b"}"


class GzipBomb:
    """
    A gzip stream of C{head}, C{size} bytes of C{filler}, then C{tail},
    produced piece by piece without ever holding the decoded body: after a
    full flush a deflate compressor emits the same bytes for the same block,
    so one compressed block is repeated as often as needed.
    """

    def __init__(self, head: bytes, filler: bytes, size: int, tail: bytes) -> None:
        self.head, self.filler, self.size, self.tail = head, filler, size, tail

    def __iter__(self) -> Iterator[bytes]:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        block = (self.filler * (_BLOCK // len(self.filler) + 1))[:_BLOCK]
        crc = zlib.crc32(self.head)
        yield compressor.compress(self.head) + compressor.flush(zlib.Z_FULL_FLUSH)
        full, rest = divmod(self.size, _BLOCK)
        segment = b""
        for _ in range(full):
            if not segment:
                segment = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
            crc = zlib.crc32(block, crc)
            yield segment
        last = block[:rest] + self.tail
        crc = zlib.crc32(last, crc)
        # The compressor's own trailer would check only what it was given.
        yield compressor.compress(last) + compressor.flush()[:-8]
        length = len(self.head) + self.size + len(self.tail)
        yield struct.pack("<II", crc, length & 0xFFFFFFFF)


def endless_gzip_newlines() -> Iterator[bytes]:
    """A gzip stream of one chat chunk and then newlines, forever."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    yield compressor.compress(chat_chunk()) + compressor.flush(zlib.Z_FULL_FLUSH)
    segment = compressor.compress(b"\n" * _BLOCK) + compressor.flush(zlib.Z_FULL_FLUSH)
    while True:
        yield segment


class HostileProvider(Resource):
    """Answers every request as its mode says (see the module docstring)."""

    isLeaf = True

    def __init__(self, mode: str, size: int, usage: Any) -> None:
        super().__init__()
        self.mode, self.size, self.usage = mode, size, usage

    def render(self, request: Any) -> Any:
        mode = _header(request, b"x-hostile-mode") or self.mode
        size = int(_header(request, b"x-hostile-size") or self.size)
        usage_text = _header(request, b"x-hostile-usage")
        usage = json.loads(usage_text) if usage_text else self.usage
        gzipped = mode.startswith("gzip-")
        shape = mode.removeprefix("gzip-")
        streamed = shape not in ("chat", "json", "dense", "garbage") or _asks_to_stream(request)
        content_type = b"text/event-stream" if streamed else b"application/json"
        request.setHeader(b"content-type", content_type)
        if gzipped:
            request.setHeader(b"content-encoding", b"gzip")
        if shape == "endless":
            return self._endless(request, gzipped)
        pieces = self._pieces(shape, size, usage, streamed, gzipped)
        _Writer(request, pieces).start()
        return NOT_DONE_YET

    def _pieces(
        self, shape: str, size: int, usage: Any, streamed: bool, gzipped: bool
    ) -> Iterator[bytes]:
        if shape == "garbage":
            return iter([(bytes(range(256)) * (size // 256 + 1))[:size]])
        if shape in ("json", "dense") or (shape == "chat" and not streamed):
            head, tail = chat_completion_parts(usage)
            filler = {"json": b" ", "dense": b'"k": 1, '}.get(shape, b"")
        else:
            # The filler first: before any event, no parser can take a short cut.
            head = b""
            tail = chat_chunk() + chat_chunk(choices=False, usage=usage) + b"data: [DONE]\n\n"
            filler = {"newlines": b"\n", "crs": b"\r", "events": b"data\n\n", "chat": b""}[shape]
        if not filler:
            size = 0
        if gzipped:
            return iter(GzipBomb(head, filler or b" ", size, tail))
        return _plain(head, filler, size, tail)

    def _endless(self, request: Any, gzipped: bool) -> Any:
        pieces = endless_gzip_newlines() if gzipped else _forever(chat_chunk(), b"\n" * _BLOCK)
        writer = task.LoopingCall(lambda: request.write(next(pieces)))
        writer.start(0.01)
        request.notifyFinish().addBoth(lambda _: writer.stop())
        return NOT_DONE_YET


class _Writer:
    """Writes a body piece by piece, as fast as the gateway reads it."""

    def __init__(self, request: Any, pieces: Iterator[bytes]) -> None:
        self._request, self._pieces = request, pieces
        self._paused = False
        self._done = False
        request.notifyFinish().addErrback(lambda _: self.stopProducing())

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        while not self._paused and not self._done:
            piece = next(self._pieces, None)
            if piece is None:
                self._done = True
                self._request.unregisterProducer()
                self._request.finish()
                return
            self._request.write(piece)

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._done = True


def _plain(head: bytes, filler: bytes, size: int, tail: bytes) -> Iterator[bytes]:
    yield head
    block = (filler * (_BLOCK // max(1, len(filler)) + 1))[:_BLOCK] if filler else b""
    full, rest = divmod(size, _BLOCK) if filler else (0, 0)
    for _ in range(full):
        yield block
    yield block[:rest] + tail


def _forever(first: bytes, then: bytes) -> Iterator[bytes]:
    yield first
    while True:
        yield then


def _asks_to_stream(request: Any) -> bool:
    try:
        return json.loads(request.content.read()).get("stream") is True
    except (ValueError, AttributeError):
        return False


def _header(request: Any, name: bytes) -> str | None:
    value = request.requestHeaders.getRawHeaders(name)
    return value[0].decode("ascii") if value else None


def spawn(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    """
    Start a hostile upstream process (C{args} as on its command line); return
    it and the port it listens on.  The caller stops it (C{terminate}).
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.hostile_upstream", "--port", "0", *args],
        stdout=subprocess.PIPE,
        cwd=_REPO,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("listening on "):
        process.kill()
        raise RuntimeError(f"the hostile upstream did not start: {line!r}")
    return process, int(line.split()[-1])


def main(argv: list[str] | None = None, out: Callable[[str], Any] = print) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.hostile_upstream")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--mode", default="chat", help="[gzip-]SHAPE, one of " + ", ".join(SHAPES))
    parser.add_argument("--size", type=int, default=16 << 20, help="bytes of filler")
    parser.add_argument("--usage", default=json.dumps(DEFAULT_USAGE), help="usage object (JSON)")
    args = parser.parse_args(argv)
    site = Site(HostileProvider(args.mode, args.size, json.loads(args.usage)))
    site.noisy = False
    port = reactor.listenTCP(args.port, site, interface="127.0.0.1")  # type: ignore[arg-type]
    out(f"listening on {port.getHost().port}")  # type: ignore[attr-defined]
    sys.stdout.flush()
    reactor.run()


if __name__ == "__main__":
    main()
