# -*- test-case-name: tests.test_pricing_refresh -*-
"""
The remote price source: fetch a table over HTTP and read it, in either shape
it comes in (llm-prices C{current-v1} or LiteLLM's).  The other sources are
read in L{majordomo.pricing.litellm} (also the bundled table) and
L{majordomo.pricing.overrides}; all of them give L{ModelPrice} records keyed
by price table (C{"openai"}, C{"azure"}, C{"anthropic"}, C{"gemini"}) and
normalised model id, so that every source meets model ids the same way.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool

from majordomo.pricing.litellm import parse_litellm
from majordomo.pricing.llm_prices import parse_llm_prices
from majordomo.pricing.prices import PriceTables, PricingError


class RemotePrices(PriceTables):
    """
    Prices read from a remote source, with the version the source declares
    (C{"llm-prices 2026-08-05"}), or C{None} when it declares none.
    """

    version: str | None = None


def parse_remote_prices(data: bytes) -> RemotePrices:
    """
    Read a fetched price table: llm-prices C{current-v1} or LiteLLM's shape.

    Raises L{PricingError} for anything else, including a table that prices
    none of the providers we route (an empty answer must not look like a table).
    """
    try:
        document = json.loads(data, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as e:
        raise PricingError(f"remote prices are not JSON: {e}") from e
    if not isinstance(document, dict):
        raise PricingError("remote prices are not a JSON object")
    remote = RemotePrices()
    if "prices" in document:
        remote.update(parse_llm_prices(document))
        updated = document.get("updated_at")
        remote.version = f"llm-prices {updated}" if isinstance(updated, str) else "llm-prices"
    else:
        remote.update(parse_litellm(document))
    if not any(remote.values()):
        raise PricingError("remote prices hold no model of a provider we route")
    return remote


def fetch_url(url: str, timeout: float = 30.0, client: Any = None) -> Deferred[bytes]:
    """
    GET C{url} with C{client} (a treq-like client such as
    C{treq.testing.StubTreq}; default: treq on a fresh, non-persistent
    connection, as a fetch every hour gains nothing from keeping one open)
    and fire with the body; fail unless it is a 200.
    """
    if client is None:
        from twisted.internet import reactor

        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

    def body(response: Any) -> Deferred[bytes]:
        if response.code != 200:
            raise PricingError(f"{url} answered HTTP {response.code}")
        content: Deferred[bytes] = response.content()
        return content

    fetched: Deferred[Any] = client.get(url, timeout=timeout)
    return fetched.addCallback(body)
