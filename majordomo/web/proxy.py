# -*- test-case-name: tests.test_gateway -*-
"""
The reverse proxy: admit the request (L{majordomo.web.admission}), ask a
stream for its usage (L{majordomo.web.rewrite}), forward it with Twisted's Agent,
stream the answer back chunk by chunk while the usage parser reads along
(L{majordomo.web.relay}), then hand one record per request to the log
writer.  Each step is a method of L{ProxyResource}, in the order
L{ProxyResource._async_render} runs them.

The response never waits on the database: the record is queued when the last
byte has been sent.

Every request with a valid key gets its row, refused ones included (an
unknown provider, a request target or metadata the gateway does not
forward): admission raises one L{Refusal}, answered in one place
(L{ProxyResource._send_refusal}) in the provider's error format.  Caller and
provider text reaches a log line only escaped (L{majordomo.logtext}), and
paths only redacted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from majordomo import providers
from majordomo.bodies.document import Exchange
from majordomo.db.keys import hash_key
from majordomo.inflight import DeferWaiter
from majordomo.ledger.record import RequestRecord
from majordomo.logtext import failure_text, printable
from majordomo.policy.gate import Allowance
from majordomo.providers import secrets
from majordomo.providers.openai_usage import USAGE_ON_REQUEST_PROVIDERS
from majordomo.usage import ERROR_NOT_BILLED, UNKNOWN, Usage
from majordomo.usage.choose import make_usage_parser
from majordomo.usage.openai import UsageChunkFilter
from majordomo.web import admission, upstream_failure
from majordomo.web.admission import Admitted, Arrival, Refusal
from majordomo.web.gateway import Gateway
from majordomo.web.headers import NOT_FORWARDED, header_list
from majordomo.web.relay import BodyRelay, ClientWatch
from majordomo.web.request_log import UnpricedModels, log_request
from majordomo.web.rewrite import UsageRewrite, usage_rewrite

log = Logger()


@dataclass(frozen=True)
class _Relayed:
    """An upstream answer relayed to the client: what it used and how it ended."""

    status_code: int
    stream: bool
    usage: Usage
    complete: bool  # the whole body reached the client
    error_message: str | None
    captured: bytes  # for body storage
    ended: float  # when the upstream's last byte arrived


class ProxyResource(Resource):
    """Forwards every request below it to the chosen provider."""

    isLeaf = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway
        # Requests whose model had no price, by (provider, model): their cost is NULL.
        self._unpriced = UnpricedModels()
        self.unpriced = self._unpriced.counts
        self._requests = DeferWaiter()

    def render(self, request: Request) -> Any:
        d = defer.Deferred.fromCoroutine(self._async_render(request))
        d.addErrback(self._internal_error, request)
        self._requests.add(d)
        return NOT_DONE_YET

    @property
    def in_flight(self) -> int:
        """How many requests are being handled now."""
        return self._requests.count

    def drained(self) -> defer.Deferred[None]:
        """Fires when no request is in flight (now, or when the last one ends)."""
        return self._requests.wait()

    def _internal_error(self, failure: Failure, request: Request) -> None:
        log.critical(
            "Proxying {path} failed: {failure}",
            path=printable(secrets.redact_path(request.uri.decode("latin-1"))),
            failure=failure_text(failure),
        )
        if not request.finished and request.channel is not None:
            if not request.startedWriting:
                request.setResponseCode(500)
            request.finish()

    async def _async_render(self, request: Request) -> None:
        """
        Admit the request (or refuse it, in one place), forward it, relay the
        answer, then write its row and end the response.
        """
        gateway = self._gateway
        headers = request.requestHeaders
        arrival = Arrival.of(
            headers,
            request.method.decode("latin-1"),
            request.uri.decode("latin-1"),
            gateway.clock.seconds(),
        )
        record: RequestRecord | None = None
        try:
            api_key = await admission.authenticated(headers, gateway.authenticate)
            record = admission.new_record(arrival, api_key.id, headers)
            admitted = await admission.admit(
                request,
                arrival,
                record,
                api_key,
                gateway.base_url,
                gateway.clock,
                gateway.policies,
                gateway.find_proxy_key,
            )
        except Refusal as refusal:
            self._send_refusal(request, arrival.provider, record, refusal)
            return
        try:
            await self._forward(request, arrival, record, admitted)
        finally:
            # Whatever happened, the request stops holding its share of its key's
            # limits (at no cost if the exact cost did not replace it first).
            if admitted.allowance is not None:
                admitted.allowance.end(None, UNKNOWN, 0)

    async def _forward(
        self, request: Request, arrival: Arrival, record: RequestRecord, admitted: Admitted
    ) -> None:
        """Forward an admitted request, relay its answer, then write its row and end it."""
        gateway = self._gateway
        rewrite = usage_rewrite(arrival, admitted)
        request.setHeader(b"x-majordomo-request-id", str(record.id).encode("ascii"))
        client = ClientWatch(request)
        forwarded = gateway.clock.seconds()
        upstream = client.track(
            gateway.upstream.request(
                request.method,
                admitted.url,
                admitted.headers,
                rewrite.body or None,
                gateway.response_timeout,
            )
        )
        try:
            response = await upstream
        except Exception:
            self._upstream_failed(request, record, client, Failure(), admitted.allowance)
            return
        record.ttfb(gateway.clock.seconds())
        relayed = await self._relay(request, arrival, admitted, rewrite, client, response)
        self._account(request, arrival, record, admitted, relayed, forwarded)
        self._send_response_end(request, client, relayed.complete)

    async def _relay(
        self,
        request: Request,
        arrival: Arrival,
        admitted: Admitted,
        rewrite: UsageRewrite,
        client: ClientWatch,
        response: IResponse,
    ) -> _Relayed:
        """Relay the upstream's answer to the client while its usage is read."""
        gateway = self._gateway
        self._start_response(request, response)
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        parser = make_usage_parser(
            arrival.provider,
            arrival.uri,
            status_code=response.code,
            content_type=content_type.decode("latin-1"),
            request_model=admitted.facts.model,
            usage_requested=rewrite.asked or arrival.provider not in USAGE_ON_REQUEST_PROVIDERS,
            served_tier=providers.served_tier(arrival.provider, response.headers),
        )
        relay = BodyRelay(
            request,
            client,
            parser,
            UsageChunkFilter() if rewrite.strip_usage_chunk else None,
            idle_timeout=gateway.idle_timeout,
            clock=gateway.clock,
            capture=gateway.body_capture_limit if gateway.bodies is not None else 0,
        )
        response.deliverBody(relay)
        complete = await relay.done
        ended = gateway.clock.seconds()
        return _Relayed(
            status_code=response.code,
            stream=admitted.facts.stream or content_type.startswith(b"text/event-stream"),
            usage=parser.finish(complete=complete),
            complete=complete,
            error_message=relay.error_message,
            captured=bytes(relay.captured),
            ended=ended,
        )

    def _account(
        self,
        request: Request,
        arrival: Arrival,
        record: RequestRecord,
        admitted: Admitted,
        relayed: _Relayed,
        forwarded: float,
    ) -> None:
        """Price the answer, store its bodies, write its row, count it and log it."""
        gateway = self._gateway
        usage = relayed.usage
        cost = gateway.prices.book.cost(arrival.provider, usage)
        if not cost.priced and usage.model and usage.input_tokens:
            self._unpriced.note(arrival.provider, usage.model)
        if admitted.allowance is not None:
            tokens = (usage.input_tokens or 0) + (usage.output_tokens or 0)
            admitted.allowance.end(cost.total_cost, usage.usage_status, tokens)
            record.extra.update(admitted.allowance.row_fields)
        self._store_bodies(request, arrival, record, admitted, relayed)
        # Journaled before the client sees the end of the response: a client
        # that got a whole answer always has its row, even if we crash now.
        row = record.finish(
            now=gateway.clock.seconds(),
            status_code=relayed.status_code,
            usage=usage,
            cost=cost,
            stream=relayed.stream,
            error_message=relayed.error_message,
        )
        gateway.writer.add(row)
        now = gateway.clock.seconds()
        gateway.metrics.request_finished(
            arrival.provider,
            relayed.status_code,
            usage,
            cost,
            ttfb=(record.ttfb_ms or 0) / 1000,
            duration=now - arrival.arrived,
            overhead=(forwarded - arrival.arrived) + (now - relayed.ended),
        )
        log_request(row)

    def _store_bodies(
        self,
        request: Request,
        arrival: Arrival,
        record: RequestRecord,
        admitted: Admitted,
        relayed: _Relayed,
    ) -> None:
        """Keep the exchange in body storage, when it is on; the row learns where."""
        bodies = self._gateway.bodies
        if bodies is None:
            return
        exchange = Exchange(
            request_id=str(record.id),
            key_id=record.key_id,
            arrived=arrival.arrived,
            method=record.method,
            path=arrival.uri,
            request_headers=header_list(request.requestHeaders),
            request_body=admitted.body,  # as the client sent it
            status_code=relayed.status_code,
            response_headers=header_list(request.responseHeaders),
            response_body=relayed.captured,
        )
        record.extra.update(bodies.store(exchange))

    def _send_response_end(self, request: Request, client: ClientWatch, complete: bool) -> None:
        """End the response the client is reading, as completely as the upstream did."""
        if client.gone:
            return
        if complete:
            request.finish()
        else:
            # The upstream broke off: end the connection without the final
            # chunk, so the client sees an incomplete response, not a short one.
            request.channel.transport.loseConnection()  # type: ignore[union-attr]

    def record_rejection(
        self, request_headers: Headers, method: str, uri: str, status: int, message: str
    ) -> None:
        """
        Write the row of a request refused before it reached the proxy (413
        body too large, 408 body too slow), if it carried a valid key.
        """
        d = defer.Deferred.fromCoroutine(
            self._record_rejection(request_headers, method, uri, status, message)
        )
        d.addErrback(
            lambda f: log.critical(
                "Recording a rejected request failed: {failure}", failure=failure_text(f)
            )
        )

    async def _record_rejection(
        self, request_headers: Headers, method: str, uri: str, status: int, message: str
    ) -> None:
        gateway = self._gateway
        arrival = Arrival.of(request_headers, method, uri, gateway.clock.seconds())
        try:
            key = admission.presented_key(request_headers)
        except Refusal:
            return  # no key is checked, so no row: whose would it be?
        api_key = await gateway.authenticate(hash_key(key))
        if api_key is None:
            return
        record = admission.new_record(arrival, api_key.id, request_headers)
        gateway.writer.add(record.failed(now=arrival.arrived, status_code=status, message=message))

    def _start_response(self, request: Request, response: IResponse) -> None:
        request.setResponseCode(response.code, response.phrase)
        request.defaultContentType = None
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in NOT_FORWARDED and any(values):
                # (The gzip decoder leaves an empty Content-Encoding behind.)
                request.responseHeaders.setRawHeaders(name, values)

    def _send_refusal(
        self, request: Request, provider: str, record: RequestRecord | None, refusal: Refusal
    ) -> None:
        """
        The one answer to a request admission refused: its row, when its key
        was valid (C{record} is then set), and the error in its provider's format.
        """
        if record is not None:
            request.setHeader(b"x-majordomo-request-id", str(record.id).encode("ascii"))
            now = self._gateway.clock.seconds()
            message = f"{refusal.code}: {refusal.message}" if refusal.code else refusal.message
            self._gateway.writer.add(
                record.failed(now=now, status_code=refusal.status, message=message)
            )
        if refusal.code is not None:
            self._gateway.metrics.policy_refusals.labels(refusal.code).inc()
        if refusal.retry_after is not None:
            request.setHeader(b"retry-after", str(refusal.retry_after).encode("ascii"))
        self._send_error_response(request, provider, refusal.status, refusal.message, refusal.code)

    def _send_error_response(
        self, request: Request, provider: str, status: int, message: str, code: str | None = None
    ) -> None:
        """Answer with an error in C{provider}'s format, and count it."""
        self._gateway.metrics.requests.labels(provider, "", str(status)).inc()
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.write(providers.error_body(provider, status, message, code))
        request.finish()

    def _upstream_failed(
        self,
        request: Request,
        record: RequestRecord,
        client: ClientWatch,
        failure: Failure,
        allowance: Allowance | None,
    ) -> None:
        """Answer a request the upstream did not answer, and write its row."""
        status, message, maybe_billed = upstream_failure.answer(failure, client_gone=client.gone)
        if allowance is not None:
            allowance.end(None, UNKNOWN if maybe_billed else ERROR_NOT_BILLED, 0)
            record.extra.update(allowance.row_fields)
        log.warn(
            "Upstream {provider} failed for request {id}: {reason}",
            provider=record.provider,
            id=record.id,
            reason=upstream_failure.reason(failure),
        )
        now = self._gateway.clock.seconds()
        row = record.failed(now=now, status_code=status, message=message, maybe_billed=maybe_billed)
        self._gateway.writer.add(row)
        self._gateway.metrics.duration.labels(record.provider).observe(now - record.arrived)
        log_request(row)
        if client.gone:
            self._gateway.metrics.requests.labels(record.provider, "", str(status)).inc()
        else:
            self._send_error_response(request, record.provider, status, message)
