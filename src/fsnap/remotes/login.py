"""``fsnap login`` / ``fsnap logout``: check credentials with a registry, keep them in docker's
credential store (``fsnap.remotes.dockerconfig``) so no command line needs a password."""

from __future__ import annotations

import re
from pathlib import Path

import trio

from fsnap.errors import InvalidArgument
from fsnap.remotes import dockerconfig
from fsnap.remotes.auth import Credentials
from fsnap.remotes.registry import RegistryClient

_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))(:[0-9]{1,5})?")


def registry_host(text: str) -> str:
    """``host[:port]`` of a REGISTRY argument (a URL's scheme and path dropped, as docker
    does); Docker Hub's aliases become ``docker.io``."""
    host = text.split("://", 1)[1] if "://" in text else text
    host = host.split("/", 1)[0]
    if not _HOST.fullmatch(host):
        raise InvalidArgument(f"not a registry host[:port]: {text!r}")
    host = host.lower()
    return "docker.io" if host in dockerconfig.DOCKER_HUB_HOSTS else host


async def login(
    registry: str,
    credentials: Credentials,
    *,
    plain_http: bool | None = None,
    ca_file: Path | None = None,
    config: Path | None = None,
) -> str:
    """Check ``credentials`` against ``registry`` (Unauthorized if refused), then store
    them; returns where they were stored."""
    host = registry_host(registry)
    async with RegistryClient(
        plain_http=plain_http, credentials=credentials, ca_file=ca_file
    ) as client:
        await client.login(host)
    path = config or dockerconfig.default_docker_config()
    return await trio.to_thread.run_sync(dockerconfig.store, path, host, credentials)


def logout(registry: str, config: Path | None = None) -> bool:
    """Forget ``registry``'s credentials; False if none were stored."""
    path = config or dockerconfig.default_docker_config()
    return dockerconfig.erase(path, registry_host(registry))
