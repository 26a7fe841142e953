"""Registry authentication: challenges, bearer tokens, Basic credentials.

Registries say how they want to be authenticated only when they refuse a request (a 401 with
``WWW-Authenticate``). We answer the challenge once, cache what we obtained (a token per
scope, or the Basic header per host) and send it up front afterwards, so a pull of many
blobs costs one token request, not one per blob.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import httpx

from fsnap.errors import RegistryError, Unauthorized
from fsnap.remotes.origin import SCHEMES, Origin
from fsnap.remotes.responses import read_capped

# Bounds on what a registry's challenge and token server may make us parse and keep.
MAX_CHALLENGE_BYTES = 4096
MAX_CHALLENGE_PARAMS = 16
MAX_TOKEN_RESPONSE = 1 << 20
# A token travels in a header: printable ASCII without spaces (JWTs, opaque tokens).
_TOKEN = re.compile(r"[\x21-\x7e]{1,65536}")

_PARAM = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)')


@dataclass(frozen=True)
class Credentials:
    """A username and password (or token) for one registry."""

    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: its scheme (lowercase) and parameters."""

    scheme: str
    params: dict[str, str]


def parse_challenge(header: str, who: str) -> Challenge | None:
    """Parse the first challenge of a ``WWW-Authenticate`` header; None if there is none.

    A header over MAX_CHALLENGE_BYTES or with over MAX_CHALLENGE_PARAMS parameters is a
    RegistryError naming ``who``: real challenges are a few hundred bytes and 2-4 params."""
    if len(header) > MAX_CHALLENGE_BYTES:
        raise RegistryError(
            f"{who} sent a WWW-Authenticate header of {len(header)} bytes "
            f"(limit {MAX_CHALLENGE_BYTES})"
        )
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    found = _PARAM.findall(rest)
    if len(found) > MAX_CHALLENGE_PARAMS:
        raise RegistryError(
            f"{who} sent a challenge with {len(found)} parameters (limit {MAX_CHALLENGE_PARAMS})"
        )
    params: dict[str, str] = {}
    for key, value in found:
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return Challenge(scheme.lower(), params)


# A token request: the request (without Authorization) and the credentials header for the
# realm's origin, if any. The caller applies its retry policy and the origin rule.
Send = Callable[[httpx.Request, str | None], Awaitable[httpx.Response]]


class TokenKey(NamedTuple):
    """What a bearer token is a function of; one cache entry per distinct value.

    A token is reused only where fetching it again would give the same answer: same realm,
    service and scope, and the same credentials (None: anonymous). Keying on fewer fields
    would hand one user's (or one scope's) token to a request made for another."""

    realm: str
    service: str
    scope: str
    credentials: Credentials | None


TokenCache = dict[TokenKey, str]


class Authenticator:
    """Answers one registry's challenges and remembers the result.

    ``origin`` is the registry's: only a 401 from it is answered (the caller checks), and
    a token realm must be HTTPS when it is. ``tokens`` may be shared between the
    authenticators of one client (see TokenKey). ``send`` performs a token request with
    the caller's retry policy, so a flaky token server is retried like the registry.
    """

    def __init__(
        self,
        host: str,
        origin: Origin,
        credentials: Credentials | None,
        send: Send,
        tokens: TokenCache | None = None,
    ) -> None:
        self.host = host
        self.origin = origin
        self.credentials = credentials
        self._send = send
        self._basic: str | None = None
        self._tokens: TokenCache = {} if tokens is None else tokens
        self._keys: dict[str, TokenKey] = {}

    def header(self, scope: str) -> str | None:
        """The Authorization header to send up front for ``scope``, if we have one."""
        key = self._keys.get(scope)
        token = self._tokens.get(key) if key is not None else None
        return token or self._basic

    async def answer(self, response: httpx.Response, scope: str) -> str:
        """Obtain a fresh Authorization header for the challenge in ``response``, a 401 the
        registry itself sent (the caller refuses 401s from any other origin)."""
        challenge = parse_challenge(
            response.headers.get("www-authenticate", ""), f"registry {self.host}"
        )
        if challenge is None:
            raise Unauthorized(
                f"registry {self.host} refused the request (401) without a challenge"
            )
        if challenge.scheme == "basic":
            return self._answer_basic()
        if challenge.scheme == "bearer":
            return await self._answer_bearer(challenge, scope)
        raise Unauthorized(
            f"registry {self.host} asks for unsupported authentication {challenge.scheme!r}"
        )

    def _answer_basic(self) -> str:
        if self.credentials is None:
            raise Unauthorized(
                f"registry {self.host} requires a username and password; none given "
                "and none found in the docker config"
            )
        self._basic = self.credentials.basic_header()
        return self._basic

    async def _answer_bearer(self, challenge: Challenge, scope: str) -> str:
        realm = self._realm(challenge)
        service = challenge.params.get("service", "")
        key = TokenKey(str(realm), service, scope, self.credentials)
        self._keys[scope] = key
        cached = self._tokens.get(key)
        if cached is not None:
            return cached
        # Several scopes (a cross-repository mount needs two) go as repeated parameters.
        params = httpx.QueryParams([("scope", one) for one in scope.split()])
        if service:
            params = params.add("service", service)
        request = httpx.Request(
            "GET", realm.copy_merge_params(params), headers={"Accept": "application/json"}
        )
        basic = self.credentials.basic_header() if self.credentials is not None else None
        response = await self._send(request, basic)
        self._tokens[key] = f"Bearer {await self._read_token(response)}"
        return self._tokens[key]

    def _realm(self, challenge: Challenge) -> httpx.URL:
        """The challenge's token realm: an http(s) URL, HTTPS whenever the registry is."""
        text = challenge.params.get("realm")
        if not text:
            raise Unauthorized(f"registry {self.host} sent a Bearer challenge without a realm")
        try:
            realm = httpx.URL(text)
        except httpx.InvalidURL as exc:
            raise RegistryError(f"registry {self.host} names a bad token realm: {exc}") from None
        if realm.scheme not in SCHEMES or not realm.host:
            raise RegistryError(
                f"registry {self.host} names a token realm that is not an http(s) URL: "
                f"{text[:200]!r}"
            )
        if self.origin.scheme == "https" and realm.scheme != "https":
            raise RegistryError(
                f"registry {self.host} (HTTPS) names a plain-HTTP token realm {text[:200]!r}; "
                "refusing to send credentials or accept a token over it"
            )
        return realm

    async def _read_token(self, response: httpx.Response) -> str:
        body = await read_capped(response, MAX_TOKEN_RESPONSE)
        if response.status_code in (401, 403):
            who = (
                f"credentials of user {self.credentials.username!r}"
                if self.credentials is not None
                else "anonymous access"
            )
            raise Unauthorized(f"token server of {self.host} refused {who}")
        if response.status_code != 200:
            raise RegistryError(f"token server of {self.host} answered HTTP {response.status_code}")
        if body is None:
            raise RegistryError(
                f"token server of {self.host} sent a response over {MAX_TOKEN_RESPONSE} bytes"
            )
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError, RecursionError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server of {self.host} sent no token")
        if not _TOKEN.fullmatch(token):
            raise RegistryError(f"token server of {self.host} sent a malformed token")
        return token

    def forget(self, scope: str) -> None:
        """Drop what we cached for ``scope``: the registry refused it (e.g. an expired token)."""
        key = self._keys.pop(scope, None)
        if key is not None:
            self._tokens.pop(key, None)
