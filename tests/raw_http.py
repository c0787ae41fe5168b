"""
Requests as raw bytes on a TCP socket: twisted.web accepts request lines the
SDKs never send (no leading slash, absolute-form, bytes above 0x7E), and an
HTTP client library would refuse or rewrite them.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer, protocol, reactor


@dataclass
class RawResponse:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class _Collect(protocol.Protocol):
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(bytes(self.received))


def request_bytes(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> bytes:
    """One HTTP/1.1 request, as it goes on the wire; the server closes after it."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: gateway.test"]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def send(port: int, data: bytes) -> RawResponse:
    """Send C{data} to 127.0.0.1:C{port}; the response, read until the server closes."""
    client = _Collect(data)
    await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port)
    return parse(await client.done)


def parse(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1]) if lines[0] else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = _unchunk(body)
    return RawResponse(status, headers, body)


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)
