"""httpx's transport with its TLS context made on the first ``https`` request.

httpx builds a client's SSL context when the client is made: with ``verify=True`` that loads
the whole CA bundle (certifi's, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), 0.1-0.16 s of CPU on
these machines, paid by every pull before its first request. A registry over plain HTTP
(localhost by default, ``--plain-http``) never needs it, unless a redirect or a token realm
leads to an ``https`` URL: ``DeferredTLS`` sends ``http`` requests through a transport
without a CA bundle and makes httpx's own transport, with the same ``verify``, for the first
``https`` one. TLS verification itself is httpx's, unchanged.

httpx honours proxy variables of the environment only for a client made without a
``transport``: ``client_transport`` gives none when one is set, and the client behaves
exactly as before (context made at once).
"""

from __future__ import annotations

import ssl
import urllib.request

import httpx


class DeferredTLS(httpx.AsyncBaseTransport):
    """``http`` requests through a transport without CA bundle; ``https`` ones through
    ``httpx.AsyncHTTPTransport(verify=verify)``, made on the first of them."""

    def __init__(self, verify: ssl.SSLContext | bool) -> None:
        self._verify = verify
        # An unverifying context is made without reading any certificate; no request of
        # this transport does TLS (https goes to the other one).
        self._plain = httpx.AsyncHTTPTransport(verify=False)
        self._tls: httpx.AsyncHTTPTransport | None = None

    @property
    def tls_made(self) -> bool:
        """Whether the ``https`` transport (and so its context) exists yet."""
        return self._tls is not None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https":
            return await self._plain.handle_async_request(request)
        if self._tls is None:
            self._tls = httpx.AsyncHTTPTransport(verify=self._verify)
        return await self._tls.handle_async_request(request)

    async def aclose(self) -> None:
        await self._plain.aclose()
        if self._tls is not None:
            await self._tls.aclose()


def client_transport(verify: ssl.SSLContext | bool) -> DeferredTLS | None:
    """The transport for a client with ``verify``; None (httpx's own, which reads the
    proxy variables) when the environment names a proxy."""
    if urllib.request.getproxies():
        return None
    return DeferredTLS(verify)
