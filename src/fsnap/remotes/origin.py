"""Credentials scoped to one origin, across redirects.

The rule (issue 9): an ``Authorization`` header goes only to requests whose scheme, host and
port equal those of the origin it was issued for: the registry's for its Basic header and
tokens, the token realm's for the credentials sent there. Registries redirect blob GETs to
object storage on other hosts (S3, a CDN); those hops are followed *without* credentials,
which is why redirects are followed here, hop by hop, and not by httpx (whose own rule keeps
the header on an http -> https upgrade of the same host, a different origin for us).
"""

from __future__ import annotations

from typing import NamedTuple

import httpx

from fsnap.errors import RegistryError

# Hops followed for one request. Docker's and Go's clients stop at 10; an object store needs 1.
MAX_REDIRECTS = 10
SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Origin(NamedTuple):
    """Scheme, host and port (the default one filled in): who a credential belongs to."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def origin_of(url: httpx.URL) -> Origin:
    """The origin of ``url``; a scheme other than http/https is a RegistryError."""
    if url.scheme not in SCHEMES:
        raise RegistryError(f"refusing URL {url} (only http and https are spoken)")
    return Origin(url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme])


async def send_scoped(
    http: httpx.AsyncClient,
    request: httpx.Request,
    authorization: str | None,
    origin: Origin,
) -> httpx.Response:
    """Send ``request`` (streamed), following at most MAX_REDIRECTS redirects, with
    ``authorization`` attached to each hop at ``origin`` and to no other hop.

    The caller owns the returned response (close it). A Location with another scheme than
    http/https, or one redirect too many, is a RegistryError (retrying cannot help)."""
    for _ in range(MAX_REDIRECTS + 1):
        hop = origin_of(request.url)
        request.headers.pop("Authorization", None)
        if authorization and hop == origin:
            request.headers["Authorization"] = authorization
        response = await http.send(request, stream=True, follow_redirects=False)
        following = response.next_request
        if following is None:
            return response
        await response.aclose()
        request = following
    raise RegistryError(f"{origin}: more than {MAX_REDIRECTS} redirects (last to {request.url})")
