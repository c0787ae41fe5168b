# -*- test-case-name: tests.test_fd_exhaustion -*-
"""
Host name resolution for upstream connections that always comes to an end.

Twisted's resolver (C{GAIResolver}) runs C{getaddrinfo} in a thread and
turns a C{socket.gaierror} into "no addresses", which HostnameEndpoint
reports as a DNSLookupError.  Any other exception is lost in a Deferred
nobody waits on: the endpoint's connection attempt never fires, and the
request waits until upstream.response_timeout.  C{getaddrinfo} raises other
exceptions exactly when the gateway is in trouble: C{OSError(EMFILE)} when no
descriptor is free to read C{/etc/hosts}, C{LookupError("unknown encoding:
idna")} when the IDNA codec could not be imported (and Python remembers that
failure for good).  Here every failure ends the resolution, so the request
fails at once (502, "could not be reached"), and is reported to
C{on_local_failure}.

ASCII names go to C{getaddrinfo} as bytes, so resolving them needs no codec.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet._resolver import GAIResolver
from twisted.internet.interfaces import IHostnameResolver, IReactorPluggableNameResolver
from zope.interface import implementer


class AnsweringGetaddrinfo:
    """
    C{socket.getaddrinfo} as GAIResolver calls it (in a thread), raising only
    C{socket.gaierror}: a failure inside the gateway becomes one, after it is
    reported (on the reactor thread) to C{on_local_failure} with a short reason.
    """

    def __init__(
        self,
        reactor: Any,
        on_local_failure: Callable[[str], None],
        getaddrinfo: Callable[..., Any] = socket.getaddrinfo,
    ) -> None:
        self._reactor = reactor
        self._on_local_failure = on_local_failure
        self._getaddrinfo = getaddrinfo

    def __call__(
        self,
        host: bytes | str | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> Any:
        name = host.encode("ascii") if isinstance(host, str) and host.isascii() else host
        try:
            return self._getaddrinfo(name, port, family, type, proto, flags)
        except socket.gaierror:
            raise  # the name does not resolve: the upstream's problem, not ours
        except Exception as e:
            reason = f"resolving {host!s}: {e.__class__.__name__}: {e}"
            self._reactor.callFromThread(self._on_local_failure, reason)
            raise socket.gaierror(socket.EAI_SYSTEM, reason) from e


@implementer(IReactorPluggableNameResolver)
class ResolvingReactor:
    """
    C{reactor} as a HostnameEndpoint sees it: everything is the reactor's,
    except the name resolver, which is C{resolver}.  (HostnameEndpoint asks
    its reactor for the resolver; installing ours on the global reactor would
    change resolution for the whole process.)
    """

    def __init__(self, reactor: Any, resolver: IHostnameResolver) -> None:
        self._reactor = reactor
        self.nameResolver = resolver

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        previous, self.nameResolver = self.nameResolver, resolver
        return previous

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def answering_reactor(
    reactor: Any,
    on_local_failure: Callable[[str], None],
    getaddrinfo: Callable[..., Any] = socket.getaddrinfo,
) -> ResolvingReactor:
    """C{reactor} with a resolver whose every resolution comes to an end."""
    resolver = GAIResolver(
        reactor, getaddrinfo=AnsweringGetaddrinfo(reactor, on_local_failure, getaddrinfo)
    )
    return ResolvingReactor(reactor, resolver)
