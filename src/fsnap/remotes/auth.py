"""Registry authentication: challenges, bearer tokens, Basic credentials, docker config.json.

Registries say how they want to be authenticated only when they refuse a request (a 401 with
``WWW-Authenticate``). We answer the challenge once, cache what we obtained (a token per
scope, or the Basic header per host) and send it up front afterwards, so a pull of many
blobs costs one token request, not one per blob.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fsnap.errors import InvalidArgument, RegistryError, Unauthorized

# Hosts that all mean Docker Hub in a docker config (its legacy index address among them).
DOCKER_HUB_HOSTS = ("docker.io", "index.docker.io", "registry-1.docker.io")

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


def parse_challenge(header: str) -> Challenge | None:
    """Parse the first challenge of a ``WWW-Authenticate`` header; None if there is none."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    for key, value in _PARAM.findall(rest):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return Challenge(scheme.lower(), params)


def default_docker_config() -> Path:
    """Where ``docker login`` writes: ``$DOCKER_CONFIG/config.json`` or ``~/.docker/``."""
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def credentials_from_docker_config(path: Path, host: str) -> Credentials | None:
    """The credentials ``docker login`` stored for ``host`` in ``path``, if any.

    Keys of ``auths`` may be bare hosts or URLs (``https://host/v1/``); both match.
    """
    try:
        data: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"cannot read docker config {path}: {exc}") from None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return None
    wanted = set(DOCKER_HUB_HOSTS) if host in DOCKER_HUB_HOSTS else {host}
    for key, entry in auths.items():
        if _config_key_host(str(key)) in wanted and isinstance(entry, dict):
            found = _entry_credentials(path, str(key), entry)
            if found is not None:
                return found
    return None


def _config_key_host(key: str) -> str:
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0]


def _entry_credentials(path: Path, key: str, entry: dict[str, Any]) -> Credentials | None:
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, sep, password = "", "", ""
        if not sep:
            raise InvalidArgument(f"docker config {path}: 'auth' of {key} is not base64 user:pass")
        return Credentials(user, password)
    username, secret = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(secret, str) and username:
        return Credentials(username, secret)
    return None


Send = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Authenticator:
    """Answers one registry host's challenges and remembers the result.

    ``send`` performs a request with the caller's retry policy, so a flaky token server is
    retried like the registry itself.
    """

    def __init__(self, host: str, credentials: Credentials | None, send: Send) -> None:
        self.host = host
        self.credentials = credentials
        self._send = send
        self._basic: str | None = None
        self._tokens: dict[str, str] = {}

    def header(self, scope: str) -> str | None:
        """The Authorization header to send up front for ``scope``, if we have one."""
        return self._tokens.get(scope) or self._basic

    async def answer(self, response: httpx.Response, scope: str) -> str:
        """Obtain a fresh Authorization header for the challenge in ``response`` (a 401)."""
        challenge = parse_challenge(response.headers.get("www-authenticate", ""))
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
        realm = challenge.params.get("realm")
        if not realm:
            raise Unauthorized(f"registry {self.host} sent a Bearer challenge without a realm")
        # Several scopes (a cross-repository mount needs two) go as repeated parameters.
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("scope", one) for one in scope.split()
        ]
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        headers = {"Accept": "application/json"}
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.basic_header()
        try:
            request = httpx.Request("GET", realm, params=params, headers=headers)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise RegistryError(
                f"registry {self.host} names a bad token realm {realm!r}: {exc}"
            ) from None
        response = await self._send(request)
        token = await self._read_token(response)
        self._tokens[scope] = f"Bearer {token}"
        return self._tokens[scope]

    async def _read_token(self, response: httpx.Response) -> str:
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        if response.status_code in (401, 403):
            who = (
                f"credentials of user {self.credentials.username!r}"
                if self.credentials is not None
                else "anonymous access"
            )
            raise Unauthorized(f"token server of {self.host} refused {who}")
        if response.status_code != 200:
            raise RegistryError(f"token server of {self.host} answered HTTP {response.status_code}")
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token server of {self.host} sent no token")
        return token

    def forget(self, scope: str) -> None:
        """Drop what we cached for ``scope``: the registry refused it (e.g. an expired token)."""
        self._tokens.pop(scope, None)
