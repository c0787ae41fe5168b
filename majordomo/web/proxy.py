# -*- test-case-name: tests.test_gateway -*-
"""
The reverse proxy: authenticate, pick the provider, forward with treq, stream
the answer back chunk by chunk while the usage parser reads along, then hand
one record per request to the log writer.

The response never waits on the database: the record is queued when the last
byte has been sent.

Every request with a valid key gets its row, refused ones included (an
unknown provider, a request target or metadata the gateway does not
forward).  Caller and provider text reaches a log line only escaped
(L{majordomo.logtext}), and paths only redacted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from twisted.internet import defer, error
from twisted.internet.error import ConnectError, ConnectionRefusedError, DNSLookupError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from majordomo import metadata, providers
from majordomo.bodies import Exchange
from majordomo.db.keys import hash_key
from majordomo.ids import uuid7
from majordomo.ledger.record import CLIENT_CLOSED_REQUEST, RequestRecord
from majordomo.logtext import failure_text, printable
from majordomo.providers import request_fields
from majordomo.usage import make_usage_parser
from majordomo.usage.openai import UsageChunkFilter, inject_include_usage
from majordomo.web import target
from majordomo.web.headers import (
    NOT_FORWARDED,
    RepeatedHeader,
    forwardable,
    header_list,
    header_map,
    single_value,
)
from majordomo.web.metrics import GatewayMetrics
from majordomo.web.relay import BodyRelay, ClientWatch
from majordomo.web.upstream import UpstreamClient

log = Logger()

# Streams on these paths carry usage only when asked (stream_options.include_usage).
_USAGE_ON_REQUEST_PATHS = ("/chat/completions", "/completions")
# Azure rejects stream_options before this api-version (USAGE-SPEC.md 2.7).
_AZURE_STREAM_OPTIONS_SINCE = "2024-09-01"
# Distinct (provider, model) pairs warned about as having no price; the
# counts that matter are in /metrics.  Model names are cut to this length.
MAX_UNPRICED_MODELS = 1000
_UNPRICED_NAME_LIMIT = 200
# Characters of a path kept in a log line.
_LOGGED_PATH_LIMIT = 500


def _may_ask_for_usage(provider: str, path: str, query: str) -> bool:
    """Whether the gateway may add stream_options.include_usage to this request."""
    if provider not in (providers.OPENAI, providers.AZURE):
        return False
    if not path.endswith(_USAGE_ON_REQUEST_PATHS):
        return False
    if provider == providers.AZURE:
        version = dict(parse_qsl(query)).get("api-version", "")
        return version[:10] >= _AZURE_STREAM_OPTIONS_SINCE
    return True


@dataclass
class Gateway:
    """What the proxy needs from the running service; injectable for tests."""

    authenticate: Any  # key hash -> Deferred[key id | None]
    base_url: Any  # provider -> configured base URL ("" = not configured)
    upstream: UpstreamClient
    prices: Any  # object with .book (a PriceBook), swapped on refresh
    writer: Any  # object with .add(record)
    clock: Any
    response_timeout: float
    idle_timeout: float
    metrics: GatewayMetrics
    bodies: Any = None  # a bodies.BodyStore, when logging.body_storage is not none
    # Largest response body kept for body storage (the client always gets all of it).
    body_capture_limit: int = 32 * 1024 * 1024


def _log_request(row: dict[str, Any]) -> None:
    """
    One line per request: what it was, what it used, what it cost.  No secrets.

    The text is made here with an f-string: twisted.logger's format-string
    machinery took 4% of the gateway's CPU for this line.  The fields stay on
    the event for JSON logs.
    """
    fields = {field: row.get(field) for field in _LOGGED_FIELDS}
    for field in _CALLER_TEXT_FIELDS:
        if isinstance(fields[field], str):
            fields[field] = printable(fields[field], _LOGGED_PATH_LIMIT)
    line = (
        f"{fields['method']} {fields['path']} {row['status_code']} {fields['model']} "
        f"in={row.get('input_tokens')} out={row.get('output_tokens')} "
        f"cost={row.get('total_cost')} {row['duration_ms']:.0f}ms"
    )
    log.info("{request_line}", request_line=line, **fields)


_LOGGED_FIELDS = (
    "id",
    "method",
    "path",
    "provider",
    "status_code",
    "model",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "total_cost",
    "usage_status",
    "duration_ms",
    "ttfb_ms",
)
# Logged fields that hold caller or provider text.
_CALLER_TEXT_FIELDS = ("method", "path", "model")


class ProxyResource(Resource):
    """Forwards every request below it to the chosen provider."""

    isLeaf = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway
        # Requests whose model had no price, by (provider, model): their cost is NULL.
        self.unpriced: Counter[tuple[str, str]] = Counter()
        self.in_flight = 0
        self._idle_waiters: list[defer.Deferred[None]] = []

    def render(self, request: Request) -> Any:
        self.in_flight += 1
        d = defer.Deferred.fromCoroutine(self._proxy(request))
        d.addErrback(self._internal_error, request)
        d.addBoth(self._request_done)
        return NOT_DONE_YET

    def _request_done(self, _: object) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def drained(self) -> defer.Deferred[None]:
        """Fires when no request is in flight (now, or when the last one ends)."""
        if self.in_flight == 0:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(waiter)
        return waiter

    def _internal_error(self, failure: Failure, request: Request) -> None:
        log.critical(
            "Proxying {path} failed: {failure}",
            path=printable(providers.redact_path(request.uri.decode("latin-1"))),
            failure=failure_text(failure),
        )
        if not request.finished and request.channel is not None:
            if not request.startedWriting:
                request.setResponseCode(500)
            request.finish()

    async def _proxy(self, request: Request) -> None:
        gateway = self._gateway
        arrived = gateway.clock.seconds()
        uri = request.uri.decode("latin-1")
        query = uri.split("?", 1)[1] if "?" in uri else ""
        choice = providers.choose_provider(request.requestHeaders, uri)
        provider = choice.provider
        try:
            key = single_value(request.requestHeaders, b"x-majordomo-key")
        except RepeatedHeader as e:
            self._reject(request, provider, 400, str(e))
            return
        if not key:
            self._reject(request, provider, 401, "Missing X-Majordomo-Key header")
            return
        try:
            api_key = await gateway.authenticate(hash_key(key))
        except Exception as e:
            log.warn("Cannot check an API key now: {error}", error=printable(e))
            self._reject(request, provider, 503, "The key store is unavailable; try again shortly")
            return
        if api_key is None:
            self._reject(request, provider, 401, "Invalid or revoked X-Majordomo-Key")
            return

        headers = header_map(request.requestHeaders)
        method = request.method.decode("latin-1")
        record = _new_record(arrived, api_key.id, provider, method, uri, headers, None)
        base_url = gateway.base_url(provider)
        refused = choice.refused
        if not base_url and not refused:
            refused = f"Provider {provider!r} is not configured"
        if refused:
            self._refuse(request, record, refused)
            return
        try:
            target.check_method(request.method)
            url = target.upstream_url(base_url, request.uri)
        except target.BadTarget as e:
            self._refuse(request, record, str(e))
            return

        body = request.content.read() if request.content is not None else b""
        fields = await request_fields.read(body, gateway.clock)
        facts = providers.request_facts(provider, uri, fields.values() if fields else None)
        record.model_requested = facts.model
        try:
            found = metadata.extract(request.requestHeaders.getAllRawHeaders())
        except metadata.MetadataError as e:
            self._refuse(request, record, str(e))
            return
        record.raw_metadata = found.raw
        record.indexed_metadata = found.indexed(api_key.indexed_metadata)
        record.provider_alias = found.provider_alias

        may_ask = _may_ask_for_usage(provider, uri.split("?")[0], query)
        sent_body, strip_usage_chunk = (
            inject_include_usage(body, fields) if may_ask and fields else (body, False)
        )

        request.setHeader(b"x-majordomo-request-id", str(record.id).encode("ascii"))
        client = ClientWatch(request)
        forwarded = gateway.clock.seconds()
        upstream = client.track(
            gateway.upstream.request(
                request.method,
                url,
                forwardable(request.requestHeaders),
                sent_body or None,
                gateway.response_timeout,
            )
        )
        try:
            response = await upstream
        except Exception:
            self._upstream_failed(request, record, client, Failure())
            return

        record.ttfb(gateway.clock.seconds())
        self._start_response(request, response)
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        parser = make_usage_parser(
            provider,
            uri,
            status_code=response.code,
            content_type=content_type.decode("latin-1"),
            request_model=facts.model,
            usage_requested=may_ask or provider not in (providers.OPENAI, providers.AZURE),
            served_tier=providers.served_tier(provider, response.headers),
        )
        relay = BodyRelay(
            request,
            client,
            parser,
            UsageChunkFilter() if strip_usage_chunk else None,
            idle_timeout=gateway.idle_timeout,
            clock=gateway.clock,
            capture=gateway.body_capture_limit if gateway.bodies is not None else 0,
        )
        response.deliverBody(relay)
        complete = await relay.done
        upstream_done = gateway.clock.seconds()
        usage = parser.finish(complete=complete)
        cost = gateway.prices.book.cost(provider, usage)
        if not cost.priced and usage.model and usage.input_tokens:
            self._note_unpriced(provider, usage.model)
        if gateway.bodies is not None:
            record.extra.update(
                gateway.bodies.store(
                    Exchange(
                        request_id=str(record.id),
                        key_id=record.key_id,
                        arrived=arrived,
                        method=record.method,
                        path=uri,
                        request_headers=header_list(request.requestHeaders),
                        request_body=body,  # as the client sent it
                        status_code=response.code,
                        response_headers=header_list(request.responseHeaders),
                        response_body=bytes(relay.captured),
                    )
                )
            )
        # Journaled before the client sees the end of the response: a client
        # that got a whole answer always has its row, even if we crash now.
        row = record.finish(
            now=gateway.clock.seconds(),
            status_code=response.code,
            usage=usage,
            cost=cost,
            stream=facts.stream or content_type.startswith(b"text/event-stream"),
            error_message=relay.error_message,
        )
        gateway.writer.add(row)
        now = gateway.clock.seconds()
        gateway.metrics.request_finished(
            provider,
            response.code,
            usage,
            cost,
            ttfb=(record.ttfb_ms or 0) / 1000,
            duration=now - arrived,
            overhead=(forwarded - arrived) + (now - upstream_done),
        )
        _log_request(row)
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
        arrived = gateway.clock.seconds()
        try:
            key = single_value(request_headers, b"x-majordomo-key")
        except RepeatedHeader:
            return  # no key is checked, so no row: whose would it be?
        api_key = await gateway.authenticate(hash_key(key)) if key else None
        if api_key is None:
            return
        provider = providers.choose_provider(request_headers, uri).provider
        headers = header_map(request_headers)
        record = _new_record(arrived, api_key.id, provider, method, uri, headers, None)
        gateway.writer.add(record.failed(now=arrived, status_code=status, message=message))

    def _note_unpriced(self, provider: str, model: str) -> None:
        """
        Count a request we could not price; warn on the first of each model,
        for the first L{MAX_UNPRICED_MODELS} models (names are the caller's
        or the provider's choice: the set must not grow without end).
        """
        name = model[:_UNPRICED_NAME_LIMIT]
        if (provider, name) not in self.unpriced:
            if len(self.unpriced) >= MAX_UNPRICED_MODELS:
                return
            log.warn(
                "No price for model {model} on {provider}: its cost is recorded as NULL "
                "(add it to pricing.overrides_file, then run majordomo reprice)",
                model=printable(model, _UNPRICED_NAME_LIMIT),
                provider=provider,
            )
            if len(self.unpriced) == MAX_UNPRICED_MODELS - 1:
                log.warn(
                    "{count} models have no price; not warning about more (see /metrics)",
                    count=MAX_UNPRICED_MODELS,
                )
        self.unpriced[provider, name] += 1

    def _start_response(self, request: Request, response: IResponse) -> None:
        request.setResponseCode(response.code, response.phrase)
        request.defaultContentType = None
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in NOT_FORWARDED and any(values):
                # (treq's gzip decoder leaves an empty Content-Encoding behind.)
                request.responseHeaders.setRawHeaders(name, values)

    def _refuse(self, request: Request, record: RequestRecord, message: str) -> None:
        """Answer 400 to an authenticated request not forwarded, and write its row."""
        row = record.failed(now=self._gateway.clock.seconds(), status_code=400, message=message)
        self._gateway.writer.add(row)
        self._reject(request, record.provider, 400, message)

    def _reject(self, request: Request, provider: str, status: int, message: str) -> None:
        self._gateway.metrics.requests.labels(provider, "", str(status)).inc()
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.write(providers.error_body(provider, status, message))
        request.finish()

    def _upstream_failed(
        self, request: Request, record: RequestRecord, client: ClientWatch, failure: Failure
    ) -> None:
        maybe_billed = True
        if client.gone:
            status, message = (
                CLIENT_CLOSED_REQUEST,
                "Client disconnected before the upstream answered",
            )
        elif failure.check(error.TimeoutError):
            status, message = 504, "Connecting to the upstream provider timed out"
            maybe_billed = False
        elif _timed_out(failure):
            status, message = 504, "The upstream provider did not answer in time"
        elif failure.check(ConnectError, ConnectionRefusedError, DNSLookupError):
            status, message = 502, "The upstream provider could not be reached"
            maybe_billed = False
        elif failure.check(ResponseFailed):
            status, message = 502, "The upstream provider closed the connection without answering"
        else:
            status, message = 502, f"Upstream request failed ({failure.type.__name__})"  # type: ignore[union-attr]
        log.warn(
            "Upstream {provider} failed for request {id}: {reason}",
            provider=record.provider,
            id=record.id,
            reason=_failure_reason(failure),
        )
        now = self._gateway.clock.seconds()
        row = record.failed(now=now, status_code=status, message=message, maybe_billed=maybe_billed)
        self._gateway.writer.add(row)
        self._gateway.metrics.duration.labels(record.provider).observe(now - record.arrived)
        _log_request(row)
        if client.gone:
            self._gateway.metrics.requests.labels(record.provider, "", str(status)).inc()
        else:
            self._reject(request, record.provider, status, message)


def _new_record(
    arrived: float,
    key_id: str,
    provider: str,
    method: str,
    uri: str,
    headers: dict[str, str],
    model: str | None,
) -> RequestRecord:
    """The record of a request just authenticated; secrets only as hashes or redacted."""
    query = uri.split("?", 1)[1] if "?" in uri else ""
    return RequestRecord.start(
        request_id=uuid7(arrived),
        arrived=arrived,
        key_id=key_id,
        provider=provider,
        method=method,
        path=providers.redact_path(uri),
        model_requested=model,
        provider_key_hash=providers.hash_secret(
            providers.provider_secret(provider, headers, query)
        ),
    )


def _timed_out(failure: Failure) -> bool:
    """A request treq cancelled at upstream.response_timeout."""
    if failure.check(defer.CancelledError, defer.TimeoutError):
        return True
    if failure.check(ResponseNeverReceived):
        reasons = getattr(failure.value, "reasons", [])
        return any(reason.check(defer.CancelledError) for reason in reasons)
    return False


# Failures whose message comes from the operating system or the configured
# base URL, never from the request: logged as they are.
_FAILURES_WITH_SAFE_MESSAGES = (ConnectError, error.TimeoutError, defer.CancelledError)


def _failure_reason(failure: Failure) -> str:
    """
    Why a request to the upstream failed, for the log.  Other exceptions'
    messages may hold the URL (with a C{?key=}) or a header: only their
    type is named, and those of the reasons they wrap.
    """
    if failure.check(*_FAILURES_WITH_SAFE_MESSAGES):
        return printable(failure.getErrorMessage())
    reason = failure.type.__name__  # type: ignore[union-attr]
    wrapped = getattr(failure.value, "reasons", None)
    if isinstance(wrapped, list):
        inner = ", ".join(
            _failure_reason(each) if isinstance(each, Failure) else type(each).__name__
            for each in wrapped
        )
        reason += f" ({inner})"
    return reason
