"""Where a registry's API lives: containerd's ``hosts.toml`` and docker's ``certs.d``.

For a reference's domain (``docker.io``, ``registry.example:5000``) the hosts directory
(``--hosts-dir`` or ``$FSNAP_HOSTS_DIR``, else ``/etc/fsnap/certs.d``, else containerd's
``/etc/containerd/certs.d``)
may hold ``<domain>/hosts.toml`` in containerd's format::

    server = "https://registry-1.docker.io"        # the upstream (default: the domain)

    [host."https://mirror.local:5000"]
      capabilities = ["pull", "resolve"]           # what this host may be asked
      ca = "/etc/certs/mirror-ca.pem"              # or a list; relative to the directory
      client = [["client.cert", "client.key"]]      # or "client.pem" (cert and key in one)
      skip_verify = false
      override_path = false                        # true: the URL path *is* the API root
      [host."https://mirror.local:5000".header]
        x-custom = "value"

and, as docker reads them, ``*.crt`` files (trusted CAs) and ``*.cert``/``*.key`` pairs
(client certificates) that apply to the upstream. ``Hosts.for_(domain)`` lists the hosts in
the order to try (mirrors in file order, the upstream last); a pull tries each host that
has the capability it needs and falls back to the next on failure.

Limits: a hosts.toml larger than ``MAX_CONFIG`` or with more than ``MAX_HOSTS`` hosts is
refused; header names and values must be printable single-line text.
"""

from __future__ import annotations

import glob
import os
import ssl
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fsnap.errors import InvalidArgument

DEFAULT_DIRS = (Path("/etc/fsnap/certs.d"), Path("/etc/containerd/certs.d"))
HOSTS_DIR_ENV = "FSNAP_HOSTS_DIR"  # colon-separated; what ``--hosts-dir`` sets
DOCKER_HUB_API = "registry-1.docker.io"
CAPABILITIES = frozenset({"pull", "resolve", "push"})
MAX_CONFIG = 64 * 1024
MAX_HOSTS = 32


def hosts_dirs_from_env() -> tuple[Path, ...]:
    """``$FSNAP_HOSTS_DIR`` (``--hosts-dir``) if set, else the default directories."""
    value = os.environ.get(HOSTS_DIR_ENV)
    if value:
        return tuple(Path(p) for p in value.split(":") if p)
    return DEFAULT_DIRS


@dataclass(frozen=True)
class Host:
    """One place to send requests for a domain, with its own TLS settings."""

    scheme: str
    host: str  # host[:port]
    path: str = "/v2"  # the API root: requests' "/v2/..." paths are rebased onto it
    capabilities: frozenset[str] = CAPABILITIES
    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()
    skip_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    mirror: bool = False

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    def url(self, api_path: str) -> str:
        """The URL of ``api_path`` (``/v2/...``) on this host."""
        return self.base + self.path + api_path.removeprefix("/v2")

    def tls(self) -> ssl.SSLContext | bool:
        """httpx's ``verify`` for this host (a context when it has its own CA, client
        certificate or skips verification; else the default trust)."""
        if not (self.ca or self.client or self.skip_verify):
            return True
        try:
            context = ssl.create_default_context()
            for ca in self.ca:
                context.load_verify_locations(cafile=ca)
            for cert, key in self.client:
                context.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(f"TLS files for {self.base}: {exc}") from None
        if self.skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass
class Hosts:
    """Host lists per domain, read from a hosts directory (see the module docstring)."""

    dirs: Sequence[Path] = DEFAULT_DIRS
    plain_http: bool | None = None
    _cache: dict[str, list[Host]] = field(default_factory=dict)

    def for_(self, domain: str, is_local: bool = False) -> list[Host]:
        if domain not in self._cache:
            self._cache[domain] = self._load(domain, is_local)
        return self._cache[domain]

    def loaded(self) -> list[list[Host]]:
        return list(self._cache.values())

    def _load(self, domain: str, is_local: bool) -> list[Host]:
        upstream_host = DOCKER_HUB_API if domain == "docker.io" else domain
        plain = is_local if self.plain_http is None else self.plain_http
        upstream = Host("http" if plain else "https", upstream_host)
        directory = self._directory(domain)
        if directory is None:
            return [upstream]
        upstream = _with_docker_files(upstream, directory)
        if self.plain_http is None and (upstream.ca or upstream.client):
            upstream = replace(upstream, scheme="https")  # TLS material given: TLS meant
        config_path = directory / "hosts.toml"
        if not config_path.is_file():
            return [upstream]
        config = _read(config_path)
        if "server" in config:
            upstream = _with_docker_files(_parse_url(str(config["server"]), config_path), directory)
        mirrors = config.get("host") or {}
        if not isinstance(mirrors, dict) or len(mirrors) > MAX_HOSTS:
            raise InvalidArgument(f"{config_path}: 'host' must be a table of at most {MAX_HOSTS}")
        hosts = [_host(url, spec, directory, config_path) for url, spec in mirrors.items()]
        upstream = _apply(upstream, config, directory, config_path, mirror=False)
        return [*hosts, upstream]

    def _directory(self, domain: str) -> Path | None:
        for base in self.dirs:
            for name in (domain, domain.replace(":", "_"), "_default"):
                candidate = base / name
                if candidate.is_dir():
                    return candidate
        return None


def _read(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_CONFIG:
            raise InvalidArgument(f"{path}: larger than {MAX_CONFIG} bytes")
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument(f"{path}: {exc}") from None


def _parse_url(url: str, where: Path) -> Host:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https") or not rest:
        raise InvalidArgument(f"{where}: {url!r} is not an http(s) URL")
    host, _, path = rest.partition("/")
    return Host(scheme, host, "/" + path.rstrip("/") if path else "/v2")


def _host(url: str, spec: Any, directory: Path, where: Path) -> Host:
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{where}: host {url!r} must be a table")
    return _apply(_parse_url(url, where), spec, directory, where, mirror=True)


def _apply(host: Host, spec: dict[str, Any], directory: Path, where: Path, mirror: bool) -> Host:
    """``host`` with the settings of one ``[host."..."]`` table (or the top level)."""
    capabilities = spec.get("capabilities", sorted(CAPABILITIES))
    if not isinstance(capabilities, list) or not set(capabilities) <= CAPABILITIES:
        raise InvalidArgument(f"{where}: capabilities must be among {sorted(CAPABILITIES)}")
    path = host.path
    if path != "/v2" and not spec.get("override_path", False):
        path = path + "/v2"  # containerd: a path names where /v2 lives, unless overridden
    return Host(
        scheme=host.scheme,
        host=host.host,
        path=path,
        capabilities=frozenset(capabilities),
        ca=host.ca + tuple(_paths(spec.get("ca"), directory, where)),
        client=host.client + tuple(_clients(spec.get("client"), directory, where)),
        skip_verify=bool(spec.get("skip_verify", host.skip_verify)),
        headers=_headers(spec.get("header"), where),
        mirror=mirror,
    )


def _paths(value: Any, directory: Path, where: Path) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        raise InvalidArgument(f"{where}: 'ca' must be a path or a list of paths")
    return [str(directory / item) for item in items]


def _clients(value: Any, directory: Path, where: Path) -> list[tuple[str, str]]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    pairs = []
    for item in items:
        if isinstance(item, str):
            pairs.append((str(directory / item), ""))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(i, str) for i in item):
            pairs.append((str(directory / item[0]), str(directory / item[1])))
        else:
            raise InvalidArgument(f"{where}: 'client' must be a path or [cert, key] pairs")
    return pairs


def _headers(value: Any, where: Path) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: 'header' must be a table")
    headers = []
    for name, raw in value.items():
        for item in raw if isinstance(raw, list) else [raw]:
            text = str(item)
            if not name.isprintable() or not text.isprintable() or "\n" in text:
                raise InvalidArgument(f"{where}: header {name!r} is not printable text")
            headers.append((name, text))
    return tuple(headers)


def _with_docker_files(host: Host, directory: Path) -> Host:
    """docker's layout: ``*.crt`` are CAs, ``X.cert`` with ``X.key`` a client certificate."""
    cas = tuple(sorted(glob.glob(str(directory / "*.crt"))))
    clients = tuple(
        (cert, cert[: -len(".cert")] + ".key")
        for cert in sorted(glob.glob(str(directory / "*.cert")))
        if os.path.exists(cert[: -len(".cert")] + ".key")
    )
    return replace(host, ca=host.ca + cas, client=host.client + clients)
