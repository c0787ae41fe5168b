# -*- test-case-name: tests.test_admission,tests.test_gateway,tests.test_hostile_requests -*-
"""
Admission: the checks a request passes before the gateway forwards it.

In order: one C{X-Majordomo-Key}, that key valid now, the provider chosen
(L{majordomo.providers.choose_provider}, the one rule) and configured, a
method and target the gateway forwards, then the body's few fields read,
the metadata headers within their limits, a proxy key (C{mdm_pk_...}) in
the provider key's place swapped for the real provider key
(L{majordomo.proxykeys}), and last the key's policy
(L{majordomo.policy.gate}: model rules, budget, rate limits).  A check that
fails raises L{Refusal}; the proxy answers every refusal in one place, in
the chosen provider's error format, with a row when the key was valid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from majordomo import metadata, providers
from majordomo.db.keys import ActiveKey, hash_key
from majordomo.ids import uuid7
from majordomo.ledger.record import RequestRecord
from majordomo.logtext import printable
from majordomo.policy.gate import Allowance, PolicyGate, PolicyRefusal
from majordomo.providers import request_fields, secrets
from majordomo.providers.query import split_target
from majordomo.proxykeys.store import ActiveProxyKey
from majordomo.proxykeys.swap import ProxyKeyRefused, Swap, carried_proxy_key
from majordomo.web import target
from majordomo.web.headers import RepeatedHeader, forwardable, header_map, single_value

log = Logger()

KEY_HEADER = b"x-majordomo-key"


class Refusal(Exception):
    """
    The gateway answers this request itself, with C{status} and C{message}
    (and, in OpenAI's format, C{code}; a policy's refusals name their rule
    there), instead of forwarding it.  C{retry_after}: seconds, for the
    C{Retry-After} header.
    """

    def __init__(
        self, status: int, message: str, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(status, message, code)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after


@dataclass(frozen=True)
class Arrival:
    """What the gateway knows of a request as it arrives, before any check."""

    arrived: float  # the clock's seconds
    method: str
    uri: str  # the request target as sent, query included
    choice: providers.ProviderChoice

    @classmethod
    def of(cls, headers: Headers, method: str, uri: str, now: float) -> Arrival:
        """The arrival of a request; its provider is chosen here, once."""
        return cls(now, method, uri, providers.choose_provider(headers, uri))

    @property
    def provider(self) -> str:
        """The provider the request goes to, whose error format a refusal uses."""
        return self.choice.provider

    @property
    def path(self) -> str:
        return split_target(self.uri)[0]

    @property
    def query(self) -> str:
        return split_target(self.uri)[1]


@dataclass(frozen=True)
class Admitted:
    """A request that passed admission: where it goes and what its body says."""

    url: bytes
    headers: Headers  # to send upstream
    body: bytes  # as the client sent it
    fields: request_fields.JSONObject | None
    facts: providers.RequestFacts
    allowance: Allowance | None = None  # what it holds of its key's limits, when it has a policy


# A key hash -> the active key it belongs to, or None (the key cache's authenticate).
Authenticate = Callable[[str], "defer.Deferred[ActiveKey | None]"]
# A proxy key hash -> the active proxy key, or None (the proxy key cache's find).
FindProxyKey = Callable[[str], "defer.Deferred[ActiveProxyKey | None]"]


def presented_key(headers: Headers) -> str:
    """The one C{X-Majordomo-Key} the request presents."""
    try:
        key = single_value(headers, KEY_HEADER)
    except RepeatedHeader as e:
        raise Refusal(400, str(e)) from None
    if not key:
        raise Refusal(401, "Missing X-Majordomo-Key header")
    return key


async def authenticated(headers: Headers, authenticate: Authenticate) -> ActiveKey:
    """The active key the request presents; refused without one, or while keys cannot be checked."""
    key = presented_key(headers)
    try:
        api_key: ActiveKey | None = await authenticate(hash_key(key))
    except Exception as e:
        log.warn("Cannot check an API key now: {error}", error=printable(e))
        raise Refusal(503, "The key store is unavailable; try again shortly") from None
    if api_key is None:
        raise Refusal(401, "Invalid or revoked X-Majordomo-Key")
    return api_key


def new_record(arrival: Arrival, key_id: str, headers: Headers) -> RequestRecord:
    """The record of a request just authenticated; secrets only as hashes or redacted."""
    provider = arrival.provider
    secret = secrets.provider_secret(provider, header_map(headers), arrival.query)
    return RequestRecord.start(
        request_id=uuid7(arrival.arrived),
        arrived=arrival.arrived,
        key_id=key_id,
        provider=provider,
        method=arrival.method,
        path=secrets.redact_path(arrival.uri),
        model_requested=None,
        provider_key_hash=secrets.hash_secret(secret),
    )


def destination(arrival: Arrival, base_url: Callable[[str], str]) -> str:
    """The configured base URL of the chosen provider; refused if it has none."""
    refused = arrival.choice.refused
    url = base_url(arrival.provider)
    if not url and not refused:
        refused = f"Provider {arrival.provider!r} is not configured"
    if refused:
        raise Refusal(400, refused)
    return url


def upstream_url(method: bytes, uri: bytes, base_url: str) -> bytes:
    """Where to forward the request; refused for a method or target not forwarded."""
    try:
        target.check_method(method)
        return target.upstream_url(base_url, uri)
    except target.BadTarget as e:
        raise Refusal(400, str(e)) from None


def attach_metadata(headers: Headers, record: RequestRecord, api_key: ActiveKey) -> None:
    """Copy the request's metadata headers to its record; refused over a limit."""
    try:
        found = metadata.extract(headers.getAllRawHeaders())
    except metadata.MetadataError as e:
        raise Refusal(400, str(e)) from None
    record.raw_metadata = found.raw
    record.indexed_metadata = found.indexed(api_key.indexed_metadata)
    record.provider_alias = found.provider_alias


async def proxy_key_swap(
    arrival: Arrival,
    record: RequestRecord,
    api_key: ActiveKey,
    forwarded: Headers,
    find_proxy_key: FindProxyKey | None,
) -> Swap | None:
    """
    The swap of the proxy key the request carries for the chosen provider's
    real key, or None without one.  Refused (401) when proxy keys are not
    enabled (C{find_proxy_key} None), for an unknown, revoked or foreign proxy
    key, and for a provider it has no key for.  The record learns the proxy
    key and the hash of the real key, never either key.
    """
    try:
        proxy_key = carried_proxy_key(forwarded, arrival.query)
    except ProxyKeyRefused as e:
        raise Refusal(401, str(e)) from None
    if proxy_key is None:
        return None
    if find_proxy_key is None:
        raise Refusal(401, "Proxy keys are not enabled on this gateway")
    try:
        found = await find_proxy_key(hash_key(proxy_key))
    except Exception as e:
        log.warn("Cannot check a proxy key now: {error}", error=printable(e))
        raise Refusal(503, "The key store is unavailable; try again shortly") from None
    if found is None or found.api_key_id != api_key.id:
        raise Refusal(401, "Invalid or revoked proxy key")
    record.proxy_key_id = found.id
    real_key = found.secrets.get(arrival.provider)
    if not real_key:
        raise Refusal(401, f"Proxy key has no {arrival.provider} key")
    record.provider_key_hash = secrets.hash_secret(real_key)
    return Swap(proxy_key, real_key)


async def admit(
    request: Request,
    arrival: Arrival,
    record: RequestRecord,
    api_key: ActiveKey,
    base_url: Callable[[str], str],
    clock: IReactorTime,
    policies: PolicyGate | None = None,
    find_proxy_key: FindProxyKey | None = None,
) -> Admitted:
    """
    The checks after authentication, in order; each may raise L{Refusal}.
    The record learns the requested model, the metadata and the proxy key
    on the way.  An admitted request with an allowance must have it ended
    when it ends.
    """
    url = upstream_url(request.method, request.uri, destination(arrival, base_url))
    body = request.content.read() if request.content is not None else b""
    fields = await request_fields.read(body, clock)
    facts = providers.request_facts(
        arrival.provider, arrival.uri, fields.values() if fields else None
    )
    record.model_requested = facts.model
    attach_metadata(request.requestHeaders, record, api_key)
    headers = forwardable(request.requestHeaders)
    swap = await proxy_key_swap(arrival, record, api_key, headers, find_proxy_key)
    if swap is not None:
        try:
            headers, url = swap.apply(headers, url)
        except ProxyKeyRefused as e:
            raise Refusal(401, str(e)) from None
    allowance = None
    if api_key.policy is not None and policies is not None:
        try:
            allowance = await policies.admit(
                api_key.id,
                api_key.policy,
                arrival.provider,
                facts.model,
                len(body),
                fields.values() if fields else None,
                record.raw_metadata,
                arrival.arrived,
            )
        except PolicyRefusal as e:
            raise Refusal(e.status, e.message, e.code, e.retry_after) from None
    return Admitted(url, headers, body, fields, facts, allowance)
