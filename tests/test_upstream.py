"""
The client the gateway forwards with: HTTPS to a provider with certificate
checks, kept-alive connections, and one endpoint per provider origin.
"""

from __future__ import annotations

import datetime
from typing import Any

import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, ssl
from twisted.trial.unittest import TestCase
from twisted.web.client import URI, BrowserLikePolicyForHTTPS, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from majordomo.web.upstream import ReusedEndpoints, UpstreamClient
from tests import support


def self_signed_localhost() -> tuple[bytes, bytes]:
    """A certificate for the name C{localhost} and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class Answer(Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return b'{"echo": ' + request.content.read() + b"}"


class CountingSite(Site):
    """Counts the TLS connections clients open."""

    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


class HTTPSTests(TestCase):
    """Forwarding to an HTTPS provider (loopback, a certificate made for the test)."""

    def setUp(self) -> None:
        cert_pem, key_pem = self_signed_localhost()
        self.trusted = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(cert_pem))
        server = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem)
        self.site = CountingSite(Answer())
        self.port = reactor.listenSSL(0, self.site, server.options(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"https://localhost:{self.port.getHost().port}/v1/chat/completions".encode()

    def client(self, tls: Any) -> UpstreamClient:
        client = UpstreamClient(reactor, 4, 5.0, tls=tls)
        self.addCleanup(client.close)
        return client

    async def post(self, client: UpstreamClient, body: bytes) -> tuple[int, bytes]:
        response = await client.request(b"POST", self.url, Headers(), body, 5.0)
        return response.code, await treq.content(response)

    def test_requests_share_one_verified_connection(self) -> defer.Deferred[None]:
        """
        Requests to an HTTPS provider whose certificate checks out are answered,
        one after the other on the same kept-alive TLS connection.
        """

        async def go() -> None:
            client = self.client(self.trusted)
            for n in range(3):
                self.assertEqual(await self.post(client, b"%d" % n), (200, b'{"echo": %d}' % n))
            self.assertEqual(self.site.connections, 1)

        return support.as_deferred(go())

    def test_untrusted_certificate_refused(self) -> defer.Deferred[None]:
        """With the system's trust roots, the test's own certificate is refused."""

        async def go() -> None:
            with self.assertRaises(ResponseNeverReceived) as caught:
                await self.post(self.client(None), b"1")
            self.assertIn("certificate verify failed", str(caught.exception.reasons[0].value))

        return support.as_deferred(go())


class ReusedEndpointsTests(TestCase):
    """One endpoint per scheme, host and port."""

    def test_same_origin_same_endpoint(self) -> None:
        endpoints = ReusedEndpoints(reactor, 5.0)
        first = endpoints.endpointForURI(URI.fromBytes(b"https://api.openai.com/v1/chat"))
        again = endpoints.endpointForURI(URI.fromBytes(b"https://api.openai.com/v1/embeddings"))
        other = endpoints.endpointForURI(URI.fromBytes(b"https://api.anthropic.com/v1/messages"))
        plain = endpoints.endpointForURI(URI.fromBytes(b"http://api.openai.com/v1/chat"))
        self.assertIs(first, again)
        self.assertEqual(len({id(first), id(other), id(plain)}), 3)
