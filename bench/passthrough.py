"""
The Python ceiling for the gateway: a bare Twisted + treq pass-through proxy
with no auth, no parsing and no logging.  Each request is forwarded with treq
(`unbuffered=True`, a persistent connection pool) and the answer is streamed
back chunk by chunk as it arrives.

    .venv/bin/python bench/passthrough.py --port 9001 --upstream http://127.0.0.1:9000

Used by bench/run.py (`make bench`); prints `listening on PORT` when ready.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

# Hop-by-hop headers, plus Content-Length: like the gateway, the answer goes
# back chunk-encoded as it arrives.
SKIP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length", b"te"}


class PassThrough(Resource):
    isLeaf = True

    def __init__(self, upstream: bytes, client: HTTPClient) -> None:
        super().__init__()
        self.upstream, self.client = upstream, client

    def render(self, request: Any) -> Any:
        headers = Headers(
            {k: v for k, v in request.requestHeaders.getAllRawHeaders() if k.lower() not in SKIP}
        )
        body = request.content.read()
        d = self.client.request(
            request.method.decode(),
            self.upstream + request.uri,
            headers=headers,
            data=body or None,
            unbuffered=True,
        )
        gone: list[Any] = []
        request.notifyFinish().addErrback(gone.append)
        d.addCallback(self.relay, request, gone)
        d.addErrback(lambda f: gone or (request.setResponseCode(502), request.finish()))
        return NOT_DONE_YET

    def relay(self, response: Any, request: Any, gone: list[Any]) -> Any:
        request.setResponseCode(response.code)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in SKIP:
                request.responseHeaders.setRawHeaders(name, values)
        done = treq.collect(response, lambda data: gone or request.write(data))
        return done.addCallback(lambda _: gone or request.finish())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 256
    pool.retryAutomatically = False
    client = HTTPClient(Agent(reactor, pool=pool))
    site = Site(PassThrough(args.upstream.rstrip("/").encode(), client))
    site.noisy = False
    site.log = lambda request: None  # no access log (the gateway has none either)
    port = reactor.listenTCP(args.port, site, backlog=4096, interface="127.0.0.1")
    print(f"listening on {port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
